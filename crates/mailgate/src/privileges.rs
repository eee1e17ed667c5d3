//! Running without root: started as root, the gateway binds its listeners and opens its spool,
//! then drops to `server.user` (and `server.group`) for good, as Postfix's daemons do; started
//! as that user (with `CAP_NET_BIND_SERVICE` for port 25), it runs without root at all. After
//! start-up it refuses to stay root unless `server.allow_root` says so.

use std::ffi::CString;
use std::path::Path;

use mailgate_config::Config;

/// Why the gateway cannot run as configured.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("refusing to run as root: set server.user (the gateway drops to it after binding its listeners) or server.allow_root = true")]
    Root,
    #[error("server.user {0:?}: no such user")]
    NoUser(String),
    #[error("server.group {0:?}: no such group")]
    NoGroup(String),
    #[error("server.user {0:?}: running as uid {1}, and only root can switch users")]
    NotRoot(String, u32),
    #[error("giving {0} to {1}: {2}")]
    Chown(String, String, std::io::Error),
    #[error("dropping to {0}: {1}")]
    Drop(String, std::io::Error),
}

/// Applies `server.user`/`group`/`allow_root` once everything that needs root is open and
/// before anything is served (see `Gateway::start_with`). The spool tree (and the local
/// submission socket) is given to the user first, so the gateway can go on writing there.
pub fn drop_after_start(cfg: &Config) -> Result<(), PrivilegeError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let Some(user) = cfg.server.user.as_deref() else {
        return if euid == 0 && !cfg.server.allow_root { Err(PrivilegeError::Root) } else { Ok(()) };
    };
    let (uid, user_gid) = lookup_user(user)?;
    let gid = match cfg.server.group.as_deref() {
        Some(g) => lookup_group(g)?,
        None => user_gid,
    };
    if euid != 0 {
        return if euid == uid { Ok(()) } else { Err(PrivilegeError::NotRoot(user.to_string(), euid)) };
    }
    chown_tree(&cfg.spool.path, uid, gid)?;
    if let Some(sock) = &cfg.submission.socket {
        chown(sock, uid, gid)?;
    }
    let fail = |e: std::io::Error| PrivilegeError::Drop(user.to_string(), e);
    // Supplementary groups first (while still allowed), then the group, then the user; glibc
    // applies each to every thread of the process.
    // SAFETY: plain system calls with valid arguments; the results are checked.
    unsafe {
        if libc::setgroups(1, &gid) != 0 {
            return Err(fail(std::io::Error::last_os_error()));
        }
        if libc::setgid(gid) != 0 {
            return Err(fail(std::io::Error::last_os_error()));
        }
        if libc::setuid(uid) != 0 {
            return Err(fail(std::io::Error::last_os_error()));
        }
        // For good: getting root back must now be impossible.
        if libc::setuid(0) == 0 || libc::geteuid() == 0 {
            return Err(fail(std::io::Error::other("root could be regained")));
        }
    }
    tracing::info!(%user, uid, gid, "dropped root privileges");
    Ok(())
}

fn lookup_user(name: &str) -> Result<(u32, u32), PrivilegeError> {
    let c = CString::new(name).map_err(|_| PrivilegeError::NoUser(name.into()))?;
    let mut buf = vec![0u8; 16 << 10];
    // SAFETY: an all-zero passwd is a valid value for getpwnam_r to fill in.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to live storage of the sizes given.
    let rc = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return Err(PrivilegeError::NoUser(name.into()));
    }
    Ok((pw.pw_uid, pw.pw_gid))
}

fn lookup_group(name: &str) -> Result<u32, PrivilegeError> {
    let c = CString::new(name).map_err(|_| PrivilegeError::NoGroup(name.into()))?;
    let mut buf = vec![0u8; 16 << 10];
    // SAFETY: an all-zero group is a valid value for getgrnam_r to fill in.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is to live storage of the sizes given.
    let rc = unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return Err(PrivilegeError::NoGroup(name.into()));
    }
    Ok(gr.gr_gid)
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), PrivilegeError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(|e| PrivilegeError::Chown(path.display().to_string(), format!("{uid}:{gid}"), e))
}

/// The spool directory and everything under it (no symlink is followed).
fn chown_tree(root: &Path, uid: u32, gid: u32) -> Result<(), PrivilegeError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        chown(&p, uid, gid)?;
        let meta = std::fs::symlink_metadata(&p)
            .map_err(|e| PrivilegeError::Chown(p.display().to_string(), String::new(), e))?;
        if meta.is_dir() {
            let entries =
                std::fs::read_dir(&p).map_err(|e| PrivilegeError::Chown(p.display().to_string(), String::new(), e))?;
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    Ok(())
}
