//! The `maildir` route: each recipient's copy becomes one file in `<path>/<local-part>/new/`,
//! written to `tmp/`, fsynced, then renamed (the maildir protocol, atomic for readers), with LF
//! line ends as maildir readers expect (the wire's CRLF is not kept).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Handoff, Outbound, RcptOutcome, Status};
use mailgate_smtp::{Enhanced, Reply};

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A mailbox directory name from a local part: lower-cased (local parts that differ only in
/// case share a mailbox, as most systems do), then every character that is not a letter, a
/// digit or one of `-_+=` (and `.` after the first position) percent-encoded as its UTF-8
/// octets. `%` itself is encoded, so the mapping is reversible: `user%evil.org`,
/// `"user@evil.org"` and `user_evil.org` are three mailboxes, and no name is a path, hidden,
/// `.` or `..`.
fn mailbox_dir(addr: &str) -> String {
    let local = addr.rsplit_once('@').map_or(addr, |(l, _)| l);
    // A quoted local part means its content: `"abc"` is `abc` (RFC 5321 §4.1.2).
    let local = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')).unwrap_or(local);
    if local.is_empty() {
        return "%".to_string();
    }
    let mut out = String::with_capacity(local.len());
    for (i, c) in local.to_lowercase().chars().enumerate() {
        if c.is_alphanumeric() || "-_+=".contains(c) || (c == '.' && i > 0) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
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
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    write!(f, "Return-Path: <{sender}>\nDelivered-To: {rcpt}\n")?;
    write_lf(&mut f, data)?;
    let f = f.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    let dest = mbox.join("new").join(&name);
    std::fs::rename(&tmp, &dest)?;
    std::fs::File::open(mbox.join("new"))?.sync_all()?;
    Ok(dest)
}

/// Writes CRLF content with LF line ends, as maildir readers expect (mutt, s-nail, Dovecot
/// all read LF); a CR that does not end a line is kept.
fn write_lf(out: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    let mut rest = data;
    while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
        out.write_all(&rest[..i])?;
        out.write_all(b"\n")?;
        rest = &rest[i + 2..];
    }
    out.write_all(rest)
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
                    Reply::new(250, Enhanced(2, 0, 0), format!("delivered to maildir as {}", p.display())),
                    None,
                )
                .handed(Handoff::Final),
                Err(e) => RcptOutcome::new(
                    Status::Deferred,
                    Reply::new(451, Enhanced(4, 3, 0), format!("maildir write failed: {e}")),
                    None,
                ),
            })
            .collect::<Vec<_>>()
    })
    .await;
    res.unwrap_or_else(|e| {
        vec![
            RcptOutcome::new(
                Status::Deferred,
                Reply::new(451, Enhanced(4, 3, 0), format!("maildir task failed: {e}")),
                None
            );
            msg.recipients.len()
        ]
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn lf_line_ends() {
        let mut out = vec![];
        super::write_lf(&mut out, b"A: b\r\n\r\nline\rwith CR\r\nlast\r\n").unwrap();
        assert_eq!(out, b"A: b\n\nline\rwith CR\nlast\n");
        let mut out = vec![];
        super::write_lf(&mut out, b"no end\r").unwrap();
        assert_eq!(out, b"no end\r");
    }

    #[test]
    fn mailbox_names_are_path_safe() {
        use super::mailbox_dir as m;
        assert_eq!(m("Someone@example.test"), "someone");
        assert_eq!(m("../../etc@x"), "%2E.%2F..%2Fetc");
        assert_eq!(m("\"a/b\"@x"), "a%2Fb");
        assert_eq!(m("..@x"), "%2E.");
        assert_eq!(m("\"\"@x"), "%");
        // Distinct local parts stay distinct mailboxes.
        let names: Vec<String> =
            ["user%evil.org@x", "\"user@evil.org\"@x", "user_evil.org@x", "user.evil.org@x", "user@x", "us%65r@x"]
                .iter()
                .map(|a| m(a))
                .collect();
        let unique: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_eq!(names[0], "user%25evil.org");
        assert_eq!(names[1], "user%40evil.org");
        for n in &names {
            assert!(!n.contains('/') && !n.starts_with('.'), "{n}");
        }
    }
}
