//! Mail authentication costs per message: DKIM signing (RSA-2048, Ed25519), the message
//! checks of a signed message (DKIM verification + DMARC + ARC), and the whole authentication
//! of a transaction (SPF + iprev + message checks + the Authentication-Results field), all
//! with a warm DNS cache: the records come from dnsmasq on loopback, looked up once before
//! timing, then answered from the resolver's cache.
//!
//! `cargo bench -p mailgate-auth` (prints numbers, asserts nothing; needs dnsmasq-base).

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use mailgate_auth::{keygen, AuthSession, Authenticator, KeyKind, Signer};

const N: u32 = 2000;

fn message(from: &str) -> Vec<u8> {
    let body = "This is a line of a fairly ordinary message body, about seventy characters.\r\n".repeat(24);
    format!(
        "From: Alice <{from}>\r\nTo: <bob@example.net>\r\nSubject: quarterly numbers\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <bench@bench.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    )
    .into_bytes()
}

fn per_msg(label: &str, n: u32, t: Duration) {
    println!("{label:<58} {:>9.1} µs/message", t.as_secs_f64() * 1e6 / n as f64);
}

fn main() {
    let headers: Vec<String> = ["From", "To", "Subject", "Date", "Message-ID"].map(String::from).to_vec();
    let dir = std::env::temp_dir().join(format!("mailgate-auth-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut records = vec![];
    let mut signers = vec![];
    for (kind, sel) in [(KeyKind::Rsa2048, "rsa"), (KeyKind::Ed25519, "ed")] {
        let (pem, txt) = keygen(kind).unwrap();
        let path = dir.join(format!("{sel}.pem"));
        std::fs::write(&path, pem).unwrap();
        records
            .push(format!("--txt-record={sel}._domainkey.bench.test,{}", mailgate_auth::txt_strings(&txt).join(",")));
        signers.push((sel, Signer::load(&path, "bench.test", sel, &headers).unwrap()));
    }
    records.push("--txt-record=bench.test,v=spf1 ip4:127.0.0.1 -all".into());
    records.push("--txt-record=_dmarc.bench.test,v=DMARC1; p=reject".into());
    // A record as senders publish them: a, mx and an include, the client found in the include.
    records.push("--txt-record=nested.bench.test,v=spf1 a mx include:_spf.bench.test -all".into());
    records.push("--host-record=nested.bench.test,192.0.2.1".into());
    records.push("--mx-host=nested.bench.test,mx.bench.test,10".into());
    records.push("--host-record=mx.bench.test,192.0.2.2".into());
    records.push("--txt-record=_spf.bench.test,v=spf1 ip4:192.0.2.0/24 ip4:127.0.0.0/8 -all".into());
    // DMARC also asks the parent domain; dnsmasq's own NXDOMAIN carries no SOA, so no resolver
    // would cache it (a real zone's would be): give it a cacheable non-DMARC answer.
    records.push("--txt-record=_dmarc.test,not a DMARC record".into());
    records.push("--ptr-record=1.0.0.127.in-addr.arpa,client.bench.test".into());
    records.push("--host-record=client.bench.test,127.0.0.1".into());
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let mut dns = Command::new("/usr/sbin/dnsmasq")
        .args(["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces"])
        .args(["--listen-address=127.0.0.1", "--pid-file=", "--local=/test/", "--local=/in-addr.arpa/"])
        // A TTL, so that the resolver caches the answers (dnsmasq gives local records TTL 0).
        .arg("--local-ttl=300")
        .arg(format!("--port={port}"))
        .arg("--user=root")
        .args(&records)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq (apt-get install dnsmasq-base)");
    std::thread::sleep(Duration::from_millis(300));

    let msg = message("alice@bench.test");
    let mut signed = vec![];
    for (sel, s) in &signers {
        let t = Instant::now();
        for _ in 0..N {
            std::hint::black_box(s.sign(&msg).unwrap());
        }
        per_msg(
            &format!("DKIM sign, {} ({} B message)", if *sel == "rsa" { "RSA-2048" } else { "Ed25519" }, msg.len()),
            N,
            t.elapsed(),
        );
        let mut m = s.sign(&msg).unwrap().into_bytes();
        m.extend_from_slice(&msg);
        signed.push((*sel, m));
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut udp = ConnectionConfig::udp();
        udp.port = port;
        let cfg =
            ResolverConfig::from_name_servers(vec![NameServerConfig::new([127, 0, 0, 1].into(), true, vec![udp])]);
        let resolver = TokioResolver::builder_with_config(cfg, TokioRuntimeProvider::default()).build().unwrap();
        let auth = Arc::new(Authenticator::new(resolver.clone(), "mx.bench.test", Duration::from_secs(5)));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        // SPF: our evaluator against mail-auth's (what the gateway used before), same resolver,
        // same warm cache, same run.
        let before = mail_auth::MessageAuthenticator(resolver.clone());
        for sender in ["alice@bench.test", "alice@nested.bench.test"] {
            let (ours, _) = auth.spf(ip, "client.bench.test", sender).await;
            assert_eq!(ours.status, mailgate_auth::Status::Pass, "{sender}: {ours:?}");
            let params = || {
                mail_auth::spf::verify::SpfParameters::verify_mail_from(
                    ip,
                    "client.bench.test",
                    "mx.bench.test",
                    sender,
                )
            };
            assert_eq!(before.verify_spf(params()).await.result(), mail_auth::SpfResult::Pass);
            let t = Instant::now();
            for _ in 0..N {
                std::hint::black_box(auth.spf(ip, "client.bench.test", sender).await);
            }
            per_msg(&format!("SPF, our RFC 7208 evaluator, {sender}"), N, t.elapsed());
            let t = Instant::now();
            for _ in 0..N {
                std::hint::black_box(before.verify_spf(params()).await);
            }
            per_msg(&format!("SPF, mail-auth 0.13 (before), {sender}"), N, t.elapsed());
        }
        for (sel, m) in &signed {
            let (_, spf) = auth.spf(ip, "client.bench.test", "alice@bench.test").await;
            let warm = auth.message(m, "bench.test", &spf).await;
            assert_eq!(warm.dkim[0].status, mailgate_auth::Status::Pass, "{warm:?}");
            let t = Instant::now();
            for _ in 0..N {
                std::hint::black_box(auth.message(m, "bench.test", &spf).await);
            }
            let alg = if *sel == "rsa" { "RSA-2048" } else { "Ed25519" };
            per_msg(&format!("DKIM verify + DMARC + ARC, {alg} signature"), N, t.elapsed());
        }
        let (_, m) = &signed[0];
        let raw = Arc::new(m.clone());
        let whole = |raw: Arc<Vec<u8>>| {
            let auth = auth.clone();
            async move {
                let mut s = AuthSession::new(auth, ip);
                s.set_helo("client.bench.test");
                s.begin_transaction("alice@bench.test");
                s.set_message(raw);
                s.header("mx.bench.test", true, true, true).await
            }
        };
        let header = whole(raw.clone()).await.unwrap_or_default();
        assert!(
            header.contains("dkim=pass") && header.contains("spf=pass") && header.contains("dmarc=pass"),
            "{header}"
        );
        let t = Instant::now();
        for _ in 0..N {
            std::hint::black_box(whole(raw.clone()).await);
        }
        per_msg("whole authentication: SPF + iprev + DKIM/DMARC/ARC + header", N, t.elapsed());
        println!("({header:?})");
    });
    let _ = dns.kill();
    let _ = dns.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
