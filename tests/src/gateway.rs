//! The gateway under test, run as a child process from a config written to a temp dir.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_for};

pub struct Gateway {
    /// Holds config, spool, maildirs and the log.
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    config: String,
}

/// The repository root (for plugins/dist).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The binary under test: `$MAILGATE_BIN`, or this package's bin that cargo builds next to
/// the test executables (`target/<profile>/mailgate-under-test`).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MAILGATE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("mailgate-under-test");
    assert!(bin.exists(), "{} is missing: run the tests with cargo test", bin.display());
    bin
}

impl Gateway {
    /// Starts a gateway. `extra` is TOML appended to a base config that listens on a fresh
    /// port and keeps its spool in the temp dir; `{dir}` in `extra` is replaced by that dir.
    pub fn start(extra: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display().to_string();
        let config = format!(
            "[server]\nhostname = \"mx.gateway.test\"\nallow_root = true\n\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:{port}\"\n\n[spool]\npath = \"{d}/spool\"\n\n{}\n",
            extra.replace("{dir}", &d)
        );
        let mut g = Gateway { dir, port, child: None, config };
        g.spawn();
        g
    }

    /// A gateway that keeps `example.test` in a maildir (`{dir}/mail`) and relays every other
    /// domain to a sink on `sink_port`, retrying every second. `extra` may bring its own
    /// `[relay]` table.
    pub fn with_sink(sink_port: u16, extra: &str) -> Gateway {
        let relay = if extra.contains("[relay]") { "" } else { "[relay]\naccept_domains = [\"example.test\"]\n" };
        Gateway::start(&format!(
            "{relay}\n{extra}\n\n[routes]\n\"example.test\" = {{ type = \"maildir\", path = \"{{dir}}/mail\" }}\n\"*\" = {{ type = \"smarthost\", host = \"127.0.0.1\", port = {sink_port}, tls = \"none\" }}\n"
        ))
    }

    /// A `[[plugin]]` block for a component built by `plugins/build.sh`. `extra` is more TOML
    /// for the entry (stages, on_error…); `config` the plugin's own table.
    pub fn plugin(name: &str, instance: &str, extra: &str, config: &str) -> String {
        let path = repo_root().join("plugins/dist").join(format!("{name}.wasm"));
        assert!(path.exists(), "{} is missing: run plugins/build.sh", path.display());
        format!(
            "\n[[plugin]]\nname = \"{instance}\"\npath = \"{}\"\n{extra}\n[plugin.config]\n{config}\n",
            path.display()
        )
    }

    /// Rewrites the config file the running gateway was started from (for reload tests).
    pub fn edit_config(&mut self, edit: impl Fn(&str) -> String) -> PathBuf {
        self.config = edit(&self.config);
        let cfg = self.path("mailgate.toml");
        std::fs::write(&cfg, &self.config).unwrap();
        cfg
    }

    /// Sends a signal to the running gateway.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn spawn(&mut self) {
        let cfg = self.path("mailgate.toml");
        std::fs::write(&cfg, &self.config).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.path("gateway.log")).unwrap();
        let child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(&cfg)
            // The config's log.level (info) decides, as for an operator without RUST_LOG.
            .env_remove("RUST_LOG")
            // Every MAILGATE_* variable is a config key to the gateway: not this one.
            .env_remove("MAILGATE_BIN")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the gateway");
        self.child = Some(child);
        let port = self.port;
        let up =
            wait_for(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()));
        assert!(up.is_some(), "gateway did not come up; log:\n{}", self.log());
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.path("gateway.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        wait_for(limit, || self.log().contains(needle).then_some(())).is_some()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let done = wait_for(Duration::from_secs(20), || c.try_wait().ok().flatten());
            if done.is_none() {
                let _ = c.kill();
                let _ = c.wait();
                panic!("gateway did not stop on SIGTERM");
            }
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts it again after [`Gateway::kill9`] or [`Gateway::stop`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }

    /// Files delivered into a maildir route's `new/` for `mailbox` under `root`.
    pub fn maildir_files(root: &Path, mailbox: &str) -> Vec<PathBuf> {
        std::fs::read_dir(root.join(mailbox).join("new"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- gateway log ----\n{}", self.log());
        }
    }
}
