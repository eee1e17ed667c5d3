//! Postfix's `smtp-sink` as a next hop: an SMTP server nobody here wrote, which advertises DSN
//! (unless told not to) and dumps every transaction with the MAIL and RCPT arguments it got.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_for};

/// One transaction as `smtp-sink -d` dumped it.
#[derive(Debug, Clone)]
pub struct Dumped {
    /// The arguments of MAIL, e.g. `<a@b> RET=HDRS`.
    pub mail_args: String,
    /// The arguments of each RCPT, in order.
    pub rcpt_args: Vec<String>,
    /// The message (after smtp-sink's own header lines).
    pub text: String,
}

pub struct PostfixSink {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl PostfixSink {
    /// Starts `smtp-sink` on 127.0.0.1; `dsn: false` leaves DSN out of its EHLO reply (`-N`).
    pub fn start(dsn: bool) -> PostfixSink {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new("smtp-sink");
        // As root it must drop to a user, which then writes the dumps.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
            cmd.args(["-u", "nobody"]);
        }
        if !dsn {
            cmd.arg("-N");
        }
        let template = format!("{}/%M.", dir.path().display());
        cmd.args(["-d", &template]).arg(format!("127.0.0.1:{port}")).arg("64");
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("smtp-sink (Debian postfix)");
        let up = wait_for(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
        assert!(up.is_some(), "smtp-sink did not come up");
        PostfixSink { port, dir, child }
    }

    /// Every complete transaction dumped so far.
    pub fn dumped(&self) -> Vec<Dumped> {
        let mut out = vec![];
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if let Some(d) = parse(&e.path()) {
                out.push(d);
            }
        }
        out
    }

    /// Waits for a transaction with a recipient `rcpt` whose content holds `needle`.
    pub fn wait_for(&self, rcpt: &str, needle: &str, limit: Duration) -> Dumped {
        wait_for(limit, || {
            self.dumped().into_iter().find(|d| d.rcpt_args.iter().any(|a| a.contains(rcpt)) && d.text.contains(needle))
        })
        .unwrap_or_else(|| panic!("no message for {rcpt} holding {needle:?} at smtp-sink; got {:?}", self.dumped()))
    }
}

impl Drop for PostfixSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one dump file: `X-Mail-Args:`/`X-Rcpt-Args:` lines, then the message.
fn parse(path: &Path) -> Option<Dumped> {
    let raw = String::from_utf8_lossy(&std::fs::read(path).ok()?).into_owned();
    let mut d = Dumped { mail_args: String::new(), rcpt_args: vec![], text: String::new() };
    let mut lines = raw.split('\n');
    for line in lines.by_ref() {
        let line = line.trim_end_matches('\r');
        if let Some(v) = line.strip_prefix("X-Mail-Args: ") {
            d.mail_args = v.to_string();
        } else if let Some(v) = line.strip_prefix("X-Rcpt-Args: ") {
            d.rcpt_args.push(v.to_string());
        } else if line.starts_with("Received: ") {
            break;
        }
    }
    d.text = lines.collect::<Vec<_>>().join("\n");
    (!d.mail_args.is_empty()).then_some(d)
}
