//! Dovecot's LMTP server (`dovecot-lmtpd`, Debian) as a local delivery agent: an LMTP server
//! nobody here wrote, on 127.0.0.1 and a unix socket, with a passwd-file of known users whose
//! maildirs the test reads. Unknown users get Dovecot's own `550 5.1.1` at RCPT; a user whose
//! home cannot be written gets a temporary failure after the data, for that user alone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_for};

pub struct Dovecot {
    pub port: u16,
    pub socket: PathBuf,
    dir: tempfile::TempDir,
    child: Child,
}

impl Dovecot {
    /// Starts Dovecot for LMTP only. `users` get a maildir under the temp dir; `broken` users
    /// exist but their home is under a file, so delivering to them fails (4.x, after DATA).
    pub fn start(users: &[&str], broken: &[&str]) -> Dovecot {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = free_port();
        for sub in ["run", "state", "mail"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("not-a-dir"), b"").unwrap();
        // As root, Dovecot drops to the users' uid: let them be nobody with a writable tree.
        // SAFETY: geteuid/getegid have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let (uid, gid) = if uid == 0 { (65534, 65534) } else { (uid, gid) };
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::set_permissions(d.join("mail"), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let mut passwd = String::new();
        for u in users {
            passwd += &format!("{u}::{uid}:{gid}::{}/mail/{u}::\n", d.display());
        }
        for u in broken {
            passwd += &format!("{u}::{uid}:{gid}::{}/not-a-dir/{u}::\n", d.display());
        }
        std::fs::write(d.join("users"), passwd).unwrap();
        let socket = d.join("lmtp.sock");
        let conf = format!(
            r#"base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/log
protocols = lmtp
listen = 127.0.0.1
ssl = no
mail_location = maildir:~/Maildir
first_valid_uid = 1
auth_username_format = %Ln
passdb {{
  driver = passwd-file
  args = {d}/users
}}
userdb {{
  driver = passwd-file
  args = {d}/users
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener lmtp {{
    path = {sock}
    mode = 0666
  }}
}}
"#,
            d = d.display(),
            sock = socket.display()
        );
        std::fs::write(d.join("dovecot.conf"), conf).unwrap();
        let child = Command::new("/usr/sbin/dovecot")
            .args(["-F", "-c"])
            .arg(d.join("dovecot.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dovecot (Debian dovecot-core and dovecot-lmtpd)");
        let up = wait_for(Duration::from_secs(15), || {
            (std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && std::os::unix::net::UnixStream::connect(&socket).is_ok())
            .then_some(())
        });
        assert!(
            up.is_some(),
            "dovecot did not come up: {}",
            std::fs::read_to_string(d.join("log")).unwrap_or_default()
        );
        Dovecot { port, socket, dir, child }
    }

    /// The messages delivered to `user`'s inbox so far.
    pub fn inbox(&self, user: &str) -> Vec<String> {
        let new = self.dir.path().join("mail").join(user).join("Maildir/new");
        let mut out: Vec<String> = std::fs::read_dir(new)
            .map(|rd| rd.flatten().filter_map(|e| std::fs::read_to_string(e.path()).ok()).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Waits until `user` has `n` messages; returns them.
    pub fn wait_inbox(&self, user: &str, n: usize, limit: Duration) -> Vec<String> {
        wait_for(limit, || {
            let m = self.inbox(user);
            (m.len() >= n).then_some(m)
        })
        .unwrap_or_else(|| panic!("{user} has {} messages, wanted {n}; log: {}", self.inbox(user).len(), self.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM lets the master take its children down with it.
        // SAFETY: kill with a pid we spawned.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = wait_for(Duration::from_secs(10), || self.child.try_wait().ok().flatten());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
