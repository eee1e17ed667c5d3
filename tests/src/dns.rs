//! A real DNS server on loopback: dnsmasq (Debian `dnsmasq-base`), authoritative for the
//! `test` zone (unknown names are NXDOMAIN, known names without the type are NODATA).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_udp_port, wait_for};

pub struct Dns {
    pub port: u16,
    child: Child,
}

/// Where dnsmasq lives on Debian.
const DNSMASQ: &str = "/usr/sbin/dnsmasq";

impl Dns {
    /// Starts dnsmasq with records given as dnsmasq options, e.g.
    /// `--mx-host=d.test,mail.d.test,10`, `--host-record=mail.d.test,127.0.0.1`,
    /// `--txt-record=d.test,v=spf1 -all` (no quotes: on the command line dnsmasq keeps them;
    /// commas separate the strings of one record).
    pub fn start(records: &[&str]) -> Dns {
        assert!(std::path::Path::new(DNSMASQ).exists(), "dnsmasq is missing: apt-get install dnsmasq-base");
        let port = free_udp_port();
        let child = Command::new(DNSMASQ)
            .args(["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces"])
            .args(["--listen-address=127.0.0.1", "--pid-file=", "--local=/test/", "--log-facility=-"])
            .arg(format!("--port={port}"))
            .arg(format!("--user={}", if is_root() { "root" } else { "nobody" }))
            .args(records)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        let up = wait_for(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
        assert!(up.is_some(), "dnsmasq did not come up");
        Dns { port, child }
    }

    /// The `[dns]` table pointing a gateway at this server.
    pub fn config(&self) -> String {
        format!("[dns]\nnameservers = [\"127.0.0.1:{}\"]\ntimeout = \"2s\"\nattempts = 1\n", self.port)
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
