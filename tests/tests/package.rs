//! The Debian package, installed and run as the operator would: `dpkg -i` creates the
//! `mailgate` system user and its spool and state directories, installs the binary, the
//! plugins, the configuration (an operator's edit of it survives an upgrade) and the systemd unit (which `systemd-analyze verify` accepts as
//! installed); the installed binary, started as the `mailgate` user with nothing but
//! `CAP_NET_BIND_SERVICE` (as the unit starts it; systemd is not PID 1 here), listens on port
//! 25 of a loopback address, receives a message and delivers it; `dpkg -r` removes the program
//! and keeps configuration and spool, `dpkg --purge` removes those too.
//!
//! The package is the one `scripts/package.sh --tested` builds from the binary these tests
//! run (scripts/test.sh does it before the tests). Root only: it installs a package.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mailgate_tests::clients::Raw;
use mailgate_tests::gateway::binary;
use mailgate_tests::sink::Sink;
use mailgate_tests::wait_for;

fn the_package() -> PathBuf {
    let target = binary().parent().and_then(Path::parent).unwrap().to_path_buf();
    let dir = target.join("package-tested/debian");
    let debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "deb")).collect())
        .unwrap_or_default();
    assert_eq!(debs.len(), 1, "one package in {} (scripts/package.sh --tested makes it)", dir.display());
    // Made from the binary under test, not an older one.
    let built = std::fs::metadata(&debs[0]).unwrap().modified().unwrap();
    assert!(built >= std::fs::metadata(binary()).unwrap().modified().unwrap(), "the package is older than the binary");
    debs[0].clone()
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd} {args:?}: {said}");
    said
}

/// `uid:gid` of the `mailgate` user.
fn account() -> (u32, u32) {
    let line = run("getent", &["passwd", "mailgate"]);
    let f: Vec<&str> = line.trim().split(':').collect();
    (f[2].parse().unwrap(), f[3].parse().unwrap())
}

fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).unwrap().trim().to_string()
}

#[test]
fn install_run_as_the_mailgate_user_on_port_25_and_remove() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "installing a package needs root");
    let deb = the_package();
    // A package left by an earlier run is replaced: start from nothing.
    let _ = Command::new("dpkg").args(["--purge", "mailgate"]).output();
    run("dpkg", &["-i", deb.to_str().unwrap()]);

    let (uid, gid) = account();
    assert_ne!(uid, 0);
    for dir in ["/var/spool/mailgate", "/var/lib/mailgate"] {
        let m = std::fs::metadata(dir).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (uid, gid, 0o750), "{dir}");
    }
    let conf = std::fs::metadata("/etc/mailgate/mailgate.toml").unwrap();
    assert_eq!((conf.uid(), conf.gid(), conf.mode() & 0o777), (0, gid, 0o640));
    let unit = "/usr/lib/systemd/system/mailgate.service";
    let verify = run("systemd-analyze", &["verify", unit]);
    assert!(verify.trim().is_empty(), "systemd-analyze verify {unit}: {verify}");
    let plugins = std::fs::read_dir("/usr/lib/mailgate/plugins").unwrap().count();
    assert_eq!(plugins, 14, "the stock plugins");

    // An operator's edit of the configuration survives an upgrade (the same package again:
    // dpkg's upgrade path, postinst run again).
    let edited = std::fs::read_to_string("/etc/mailgate/mailgate.toml").unwrap() + "# edited by the operator\n";
    std::fs::write("/etc/mailgate/mailgate.toml", &edited).unwrap();
    run("dpkg", &["-i", deb.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string("/etc/mailgate/mailgate.toml").unwrap(), edited);
    let conf = std::fs::metadata("/etc/mailgate/mailgate.toml").unwrap();
    assert_eq!((conf.uid(), conf.gid(), conf.mode() & 0o777), (0, gid, 0o640));
    assert_eq!(account(), (uid, gid), "the same user");

    // As the unit runs it: the mailgate user, no privilege but binding low ports.
    let as_mailgate = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=mailgate",
            "--regid=mailgate",
            "--init-groups",
            "--inh-caps=-all,+net_bind_service",
            "--ambient-caps=-all,+net_bind_service",
            "--bounding-set=-all,+net_bind_service",
            "--no-new-privs",
            "/usr/bin/mailgate",
        ]);
        c.args(args).current_dir("/").env_remove("MAILGATE_BIN").env_remove("RUST_LOG");
        c
    };
    // The packaged configuration loads as installed (its plugins compiled, as the user).
    let out = as_mailgate(&["config", "check", "--config", "/etc/mailgate/mailgate.toml"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The admin commands find the packaged config by themselves: they ask its admin endpoint
    // (where nothing runs in this test) rather than saying the embedded one has none.
    let out = Command::new("/usr/bin/mailgate").arg("status").env_remove("MAILGATE_BIN").output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("127.0.0.1:8026"), "{said}");

    let sink = Sink::start();
    let cfg = "/etc/mailgate/package-test.toml";
    std::fs::write(
        cfg,
        format!(
            "[server]\nhostname = \"mx.package.test\"\n\n[[listener]]\nname = \"mx\"\naddress = \"127.0.25.1:25\"\n\n\
             [relay]\naccept_domains = [\"package.test\"]\n\n[spool]\npath = \"/var/spool/mailgate\"\n\n\
             [routes]\n\"*\" = {{ type = \"smarthost\", host = \"127.0.0.1\", port = {}, tls = \"none\" }}\n\n\
             [[plugin]]\nname = \"helo-check\"\npath = \"/usr/lib/mailgate/plugins/helo-check.wasm\"\nstages = [\"helo\"]\n",
            sink.port()
        ),
    )
    .unwrap();
    run("chgrp", &["mailgate", cfg]);
    run("chmod", &["0640", cfg]);
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child =
        as_mailgate(&["serve", "--config", cfg]).stdout(Stdio::null()).stderr(log.reopen().unwrap()).spawn().unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 25, 1], 25));
    let up = wait_for(Duration::from_secs(30), || std::net::TcpStream::connect(addr).ok());
    let logged = || std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(up.is_some(), "not listening on {addr}: {}", logged());
    let pid = child.id();
    assert_eq!(status_field(pid, "Uid"), format!("{uid}\t{uid}\t{uid}\t{uid}"));
    // Effective and bounding capabilities: CAP_NET_BIND_SERVICE (bit 10) alone.
    assert_eq!(status_field(pid, "CapEff"), "0000000000000400");
    assert_eq!(status_field(pid, "CapBnd"), "0000000000000400");

    let (mut c, greeting) = Raw::connect_to(addr);
    assert!(greeting.starts_with("220 mx.package.test"), "{greeting}");
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<app@package.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<ann@remote.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: from the package\r\n\r\nhello\r\n");
    let r = c.cmd(".");
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
    let got = sink.wait_for(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "{}", logged());
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: from the package"));
    // The spool the user wrote is its own.
    let entries = std::fs::read_dir("/var/spool/mailgate").unwrap().count();
    assert!(entries > 0);
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success(), "{}", logged());
    std::fs::remove_file(cfg).unwrap();

    // Removed: the program goes, the configuration and the spool stay; purged: they go too.
    run("dpkg", &["-r", "mailgate"]);
    assert!(!Path::new("/usr/bin/mailgate").exists());
    assert!(!Path::new(unit).exists());
    assert!(Path::new("/etc/mailgate/mailgate.toml").exists());
    assert!(Path::new("/var/spool/mailgate").exists());
    run("dpkg", &["--purge", "mailgate"]);
    assert!(!Path::new("/etc/mailgate/mailgate.toml").exists());
    assert!(!Path::new("/var/spool/mailgate").exists());
}
