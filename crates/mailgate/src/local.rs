//! Local submission: SMTP on a unix socket (`submission.socket`) for `mailgate sendmail` and
//! any local program. The kernel tells us who the peer is (SO_PEERCRED): that user is the
//! session's authenticated identity, so the message is treated as a submission (Date and
//! Message-ID completed, relaying allowed) and logs and `Received:` name the user. Everything
//! after the accept is the ordinary session, cleanup and spool.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::Instrument;

use crate::server::Shared;
use crate::session::Session;

/// Binds the socket (replacing a stale one nobody listens on).
pub(crate) fn bind(path: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("submission.socket {}: another process is listening on it", path.display());
        }
        std::fs::remove_file(path).map_err(|e| anyhow::anyhow!("submission.socket {}: {e}", path.display()))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("submission.socket {}: {e}", dir.display()))?;
    }
    let listener =
        UnixListener::bind(path).map_err(|e| anyhow::anyhow!("submission.socket {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    tracing::info!(socket = %path.display(), "local submission listening");
    Ok(listener)
}

/// Serves a bound socket until `stop`.
pub(crate) fn serve(
    listener: UnixListener,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(accept_loop(listener, shared, stop))
}

/// Local sessions count against the loopback address in the session limits.
const LOOPBACK: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

async fn accept_loop(listener: UnixListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let name: Arc<str> = "local".into();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(listener = %name, "accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(user) = peer_user(&stream) else {
            tracing::warn!("local submission: the peer's credentials are unknown; refused");
            continue;
        };
        let (shared, name, stop) = (shared.clone(), name.clone(), stop.clone());
        tokio::spawn(async move {
            let refuse = |b: &[u8]| drop(stream.try_write(b));
            let Some(admitted) = crate::server::admit(&shared, refuse, LOOPBACK.ip(), &name) else { return };
            let sid = shared.next_sid();
            let span = tracing::info_span!("session", sid = %sid, client = %format!("local:{user}"));
            let pipeline = mailgate_config::DEFAULT_PIPELINE.to_string();
            let conn = crate::session::Accepted {
                sid,
                peer: LOOPBACK,
                local: LOOPBACK,
                listener: name,
                role: mailgate_config::Role::Mx,
                pipeline,
                slot: admitted.slot.clone(),
                user: Some(user),
            };
            Session::new(conn, stream, shared.clone(), stop).run().instrument(span).await;
        });
    }
}

/// The peer's login name (or `uid N` when it has none), from the kernel's credentials.
fn peer_user(stream: &UnixStream) -> Option<String> {
    let uid = stream.peer_cred().ok()?.uid();
    Some(user_name(uid).unwrap_or_else(|| format!("uid {uid}")))
}

pub(crate) fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: an all-zero passwd is a valid value for getpwuid_r to fill in.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to live storage of the sizes given; getpwuid_r writes only there.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
    Some(name.to_string_lossy().into_owned())
}
