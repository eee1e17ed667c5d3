//! The `maildir` route: each recipient's copy becomes one file in `<path>/<local-part>/new/`,
//! written to `tmp/`, fsynced, then renamed (the maildir protocol, atomic for readers).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Outbound, RcptOutcome, Status};

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A mailbox directory name from a local part: lower-cased, path-safe.
fn mailbox_dir(addr: &str) -> String {
    let local = addr.rsplit_once('@').map_or(addr, |(l, _)| l).trim_matches('"');
    let clean: String = local
        .to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() || "-_+=".contains(c) || (c == '.') { c } else { '_' })
        .collect();
    match clean.trim_start_matches('.') {
        "" => "_".to_string(),
        s => s.to_string(),
    }
}

fn write_one(root: &Path, id: &str, sender: &str, rcpt: &str, data: &[u8]) -> std::io::Result<PathBuf> {
    let mbox = root.join(mailbox_dir(rcpt));
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(mbox.join(sub))?;
    }
    let name = format!(
        "{}.{}_{}.{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs(),
        id,
        SEQ.fetch_add(1, Ordering::Relaxed),
        std::process::id()
    );
    let tmp = mbox.join("tmp").join(&name);
    let mut f = std::fs::File::create(&tmp)?;
    write!(f, "Return-Path: <{sender}>\r\nDelivered-To: {rcpt}\r\n")?;
    f.write_all(data)?;
    f.sync_all()?;
    let dest = mbox.join("new").join(&name);
    std::fs::rename(&tmp, &dest)?;
    std::fs::File::open(mbox.join("new"))?.sync_all()?;
    Ok(dest)
}

pub async fn deliver(root: &Path, msg: &Outbound<'_>) -> Vec<RcptOutcome> {
    let (root, id, sender) = (root.to_path_buf(), msg.id.to_string(), msg.sender.to_string());
    let rcpts = msg.recipients.to_vec();
    let data = msg.data.to_vec();
    let res = tokio::task::spawn_blocking(move || {
        rcpts
            .iter()
            .map(|r| match write_one(&root, &id, &sender, r, &data) {
                Ok(p) => RcptOutcome::new(
                    Status::Delivered,
                    format!("250 2.0.0 delivered to maildir as {}", p.display()),
                    None,
                ),
                Err(e) => RcptOutcome::new(Status::Deferred, format!("451 4.3.0 maildir write failed: {e}"), None),
            })
            .collect::<Vec<_>>()
    })
    .await;
    res.unwrap_or_else(|e| {
        vec![
            RcptOutcome::new(Status::Deferred, format!("451 4.3.0 maildir task failed: {e}"), None);
            msg.recipients.len()
        ]
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn mailbox_names_are_path_safe() {
        assert_eq!(super::mailbox_dir("Someone@example.test"), "someone");
        assert_eq!(super::mailbox_dir("../../etc@x"), "_.._etc");
        assert_eq!(super::mailbox_dir("\"a/b\"@x"), "a_b");
        assert_eq!(super::mailbox_dir("..@x"), "_");
    }
}
