//! A DNSSEC-signed zone on loopback, served by Knot DNS (Debian `knot`, `knot-dnsutils`) and
//! signed by Knot itself: `knotd` signs the zone with a fresh ECDSA P-256 key, `kdig` takes it
//! out by AXFR, chosen records are altered after signing (their signatures no longer verify:
//! bogus), and a second `knotd` serves the result as it is. The zone's key-signing DNSKEY is
//! written out as a trust anchor file for the gateway's `dns.trust_anchor`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_udp_port, wait_for};

pub struct SignedZone {
    pub port: u16,
    /// The zone's DNSKEY (flags 257) as a trust anchor file.
    pub anchor: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

const KNOTD: &str = "/usr/sbin/knotd";
const KDIG: &str = "/usr/bin/kdig";

fn knot_conf(dir: &Path, port: u16, zone: &str, file: &str, sign: bool) -> String {
    let d = dir.display();
    let signing = if sign { "    dnssec-signing: on\n    dnssec-policy: test\n" } else { "    dnssec-signing: off\n" };
    format!(
        "server:\n    listen: 127.0.0.1@{port}\n    rundir: {d}\n\
         database:\n    storage: {d}/db\n\
         log:\n  - target: stderr\n    any: warning\n\
         policy:\n  - id: test\n    algorithm: ecdsap256sha256\n    single-type-signing: on\n    nsec3: off\n\
         acl:\n  - id: xfr\n    address: 127.0.0.0/8\n    action: transfer\n\
         template:\n  - id: default\n    storage: {d}\n    zonefile-sync: -1\n    zonefile-load: whole\n    journal-content: none\n\
         zone:\n  - domain: {zone}\n    file: {file}\n    acl: xfr\n{signing}"
    )
}

fn knotd(dir: &Path, conf: &str, name: &str) -> Child {
    let path = dir.join(name);
    std::fs::write(&path, conf).unwrap();
    Command::new(KNOTD).arg("-c").arg(&path).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start knotd")
}

/// The zone by AXFR, once it is served signed (comments and the closing SOA left out).
fn axfr(port: u16, zone: &str) -> Option<Vec<String>> {
    let out = Command::new(KDIG).args(["@127.0.0.1", "-p", &port.to_string(), zone, "AXFR"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines: Vec<String> =
        text.lines().filter(|l| !l.starts_with(';') && !l.trim().is_empty()).map(str::to_string).collect();
    if !lines.iter().any(|l| l.contains("\tRRSIG\t")) || !lines.iter().any(|l| l.contains("\tDNSKEY\t")) {
        return None;
    }
    lines.pop(); // AXFR ends with the SOA again
    Some(lines)
}

impl SignedZone {
    /// Serves `zone` with `records` (zone-file lines, names relative to the zone) signed, then
    /// with the data of the TLSA records at or under the names in `bogus` (relative) altered.
    pub fn start(zone: &str, records: &[String], bogus: &[&str]) -> SignedZone {
        assert!(Path::new(KNOTD).exists() && Path::new(KDIG).exists(), "apt-get install knot knot-dnsutils");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        let mut text = format!(
            "$ORIGIN {zone}.\n$TTL 300\n@ SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 300\n@ NS ns\nns A 127.0.0.1\n"
        );
        for r in records {
            text.push_str(r);
            text.push('\n');
        }
        std::fs::write(dir.path().join("unsigned.zone"), text).unwrap();

        // Signed by knotd, taken out by AXFR.
        let port = free_udp_port();
        let mut signer = knotd(dir.path(), &knot_conf(dir.path(), port, zone, "unsigned.zone", true), "sign.conf");
        let signed = wait_for(Duration::from_secs(20), || axfr(port, zone));
        let _ = signer.kill();
        let _ = signer.wait();
        let mut signed = signed.expect("knotd did not serve the zone signed");

        let bogus: Vec<String> = bogus.iter().map(|b| format!("{b}.{zone}.")).collect();
        for line in signed.iter_mut() {
            let f: Vec<&str> = line.split('\t').collect();
            let owner_bogus =
                bogus.iter().any(|b| f[0].trim() == b.as_str() || f[0].trim().ends_with(&format!(".{b}")));
            if owner_bogus && f.len() >= 5 && f[3] == "TLSA" {
                // Change the data's last character: the RRSIG no longer covers it.
                let last = line.pop().unwrap();
                line.push(match last {
                    '0' => '1',
                    '1' => '2',
                    _ => '0',
                });
            }
        }
        let anchor = dir.path().join("anchor.keys");
        let ksk: Vec<&String> = signed.iter().filter(|l| l.contains("\tDNSKEY\t") && l.contains("\t257 ")).collect();
        assert!(!ksk.is_empty(), "no key-signing DNSKEY in {signed:?}");
        std::fs::write(&anchor, ksk.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        std::fs::write(dir.path().join("signed.zone"), signed.join("\n") + "\n").unwrap();

        // Served as it is now.
        let port = free_udp_port();
        let child = knotd(dir.path(), &knot_conf(dir.path(), port, zone, "signed.zone", false), "serve.conf");
        let up = wait_for(Duration::from_secs(20), || {
            let out = Command::new(KDIG)
                .args(["@127.0.0.1", "-p", &port.to_string(), "+dnssec", "+short", zone, "SOA"])
                .output()
                .ok()?;
            (out.status.success() && !out.stdout.is_empty()).then_some(())
        });
        assert!(up.is_some(), "knotd did not serve the signed zone");
        SignedZone { port, anchor, child, _dir: dir }
    }

    /// The `[dns]` table pointing a gateway at this server and trusting the zone's key.
    pub fn config(&self) -> String {
        format!(
            "[dns]\nnameservers = [\"127.0.0.1:{}\"]\ntimeout = \"2s\"\nattempts = 1\ntrust_anchor = \"{}\"\n",
            self.port,
            self.anchor.display()
        )
    }
}

impl Drop for SignedZone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
