//! The RFC 7208 test suite (openspf's `rfc7208-tests.yml`, release 2014.04, as pyspf ships it;
//! `scripts/deps.sh` fetches it) run **through the gateway**: each scenario's zone data served
//! by a DNS server on loopback, each test's client address made real on the loopback of a
//! network namespace of this test's own, a real SMTP conversation from that address, and the
//! result read from what the gateway says — the `spf=` of `Authentication-Results:` in the
//! delivered message, or the 550 (with the domain's explanation) when the `spf` plugin
//! refuses a `fail`.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use mailgate_tests::free_port;
use mailgate_tests::gateway::{repo_root, Gateway};
use mailgate_tests::zone::{Rr, Zone, ZoneDns};
use yaml_rust2::{Yaml, YamlLoader};

/// The suite file: `SPF_SUITE`, or where `scripts/deps.sh` puts it.
fn suite_path() -> PathBuf {
    std::env::var_os("SPF_SUITE").map(PathBuf::from).unwrap_or_else(|| repo_root().join("tests/data/rfc7208-tests.yml"))
}

/// The suite's one test whose zone cannot be served as valid DNS: a TXT record with a NUL
/// byte is fine, but `null-text`'s record is given as a YAML null that pyspf's own driver
/// turns into the string "None".
const NOT_SERVABLE: &[&str] = &["null-text"];

/// Tests whose identity no client can present in a valid SMTP conversation: a MAIL FROM
/// domain with an over-long or empty label, an address without a local part, a HELO that is
/// not a domain name. The gateway refuses the command with 501 before there is anything to
/// check SPF for — the test asserts that refusal instead of a result.
const REFUSED_BY_SMTP: &[&str] =
    &["toolonglabel", "emptylabel", "nolocalpart", "invalid-domain-long-via-macro", "invalid-hello-macro"];

struct Case {
    name: String,
    helo: String,
    host: IpAddr,
    mailfrom: String,
    results: Vec<String>,
    explanation: Option<String>,
}

fn text(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Real(r) => Some(r.clone()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(y: &Yaml) -> Vec<Vec<u8>> {
    match y {
        Yaml::Array(a) => a.iter().filter_map(text).map(String::into_bytes).collect(),
        other => text(other).map(String::into_bytes).into_iter().collect(),
    }
}

/// The zone as pyspf's driver builds it: `SPF` records are served as TXT too, unless the name
/// has TXT records (or `TXT: NONE`) of its own.
fn zone(data: &Yaml) -> Zone {
    let mut z = Zone::default();
    let Yaml::Hash(names) = data else { return z };
    for (name, entries) in names {
        let name = text(name).unwrap_or_default().to_ascii_lowercase();
        let mut rrs = vec![];
        let mut generated = vec![];
        let mut has_txt = false;
        for e in entries.as_vec().into_iter().flatten() {
            if e.as_str() == Some("TIMEOUT") {
                rrs.push(Rr::Timeout);
                continue;
            }
            let Yaml::Hash(h) = e else { continue };
            for (t, v) in h {
                match t.as_str().unwrap_or_default() {
                    "TXT" => {
                        has_txt = true;
                        if v.as_str() != Some("NONE") {
                            rrs.push(Rr::Txt(strings(v)));
                        }
                    }
                    "SPF" => {
                        if v.as_str() != Some("NONE") {
                            generated.push(Rr::Txt(strings(v)));
                        }
                    }
                    "A" => rrs.extend(text(v).and_then(|a| a.parse().ok()).map(Rr::A)),
                    "AAAA" => rrs.extend(text(v).and_then(|a| a.parse().ok()).map(Rr::Aaaa)),
                    "PTR" => rrs.extend(text(v).map(Rr::Ptr)),
                    "CNAME" => rrs.extend(text(v).map(Rr::Cname)),
                    "MX" => {
                        if let Some([p, n]) = v.as_vec().map(Vec::as_slice) {
                            rrs.push(Rr::Mx(p.as_i64().unwrap_or(0) as u16, text(n).unwrap_or_default()));
                        }
                    }
                    other => panic!("{name}: record type {other} not handled"),
                }
            }
        }
        if !has_txt {
            rrs.extend(generated);
        }
        z.0.entry(name).or_default().extend(rrs);
    }
    z
}

fn cases(tests: &Yaml) -> Vec<Case> {
    let Yaml::Hash(h) = tests else { return vec![] };
    h.iter()
        .map(|(name, t)| {
            let name = text(name).unwrap_or_default();
            let results = match &t["result"] {
                Yaml::Array(a) => a.iter().filter_map(text).collect(),
                other => text(other).into_iter().collect(),
            };
            Case {
                helo: text(&t["helo"]).unwrap_or_default(),
                host: text(&t["host"]).and_then(|h| h.parse().ok()).unwrap_or_else(|| panic!("{name}: host")),
                mailfrom: text(&t["mailfrom"]).unwrap_or_default(),
                results,
                explanation: text(&t["explanation"]),
                name,
            }
        })
        .collect()
}

/// Puts this thread (and the gateway and DNS server it starts) into a new network namespace
/// with `addrs` on its loopback.
fn enter_namespace(addrs: &[IpAddr]) {
    // SAFETY: unshare affects only the calling thread's network namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET) needs root: {}", std::io::Error::last_os_error());
    let ip = |args: &[&str]| {
        let st = Command::new("ip").args(args).status().expect("ip (iproute2)");
        assert!(st.success(), "ip {args:?}");
    };
    ip(&["link", "set", "lo", "up"]);
    // An IPv4-mapped client is its IPv4 address.
    let mut addrs: Vec<IpAddr> = addrs
        .iter()
        .map(|a| if let IpAddr::V6(v6) = a { v6.to_ipv4_mapped().map_or(*a, IpAddr::V4) } else { *a })
        .collect();
    addrs.sort();
    addrs.dedup();
    for a in addrs {
        match a {
            IpAddr::V4(v4) => ip(&["addr", "add", &format!("{v4}/32"), "dev", "lo"]),
            IpAddr::V6(v6) => ip(&["-6", "addr", "add", &format!("{v6}/128"), "dev", "lo", "nodad"]),
        }
    }
}

/// A connection to the gateway's `[::]` listener from `src`.
fn connect_from(src: IpAddr, port: u16) -> TcpStream {
    let dst: SocketAddr = match src {
        IpAddr::V4(_) => ([127, 0, 0, 1], port).into(),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => ("::ffff:127.0.0.1".parse::<IpAddr>().unwrap(), port).into(),
        IpAddr::V6(_) => ("::1".parse::<IpAddr>().unwrap(), port).into(),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let s = rt
        .block_on(async {
            let sock = if dst.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
            sock.bind(SocketAddr::new(src, 0))?;
            sock.connect(dst).await
        })
        .unwrap_or_else(|e| panic!("connect from {src}: {e}"));
    let s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

struct Smtp {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Smtp {
    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).unwrap_or(0) == 0 {
                return all;
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }
    fn cmd(&mut self, line: &str) -> String {
        self.w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        self.reply()
    }
}

/// What the gateway said about one test: the SPF result and the 550's explanation.
fn run_case(gw: &Gateway, port: u16, c: &Case, n: usize) -> Result<(String, Option<String>), String> {
    let s = connect_from(c.host, port);
    let mut smtp = Smtp { r: BufReader::new(s.try_clone().unwrap()), w: s };
    smtp.reply();
    let helo = if c.helo.is_empty() { "unknown".to_string() } else { c.helo.clone() };
    let r = smtp.cmd(&format!("EHLO {helo}"));
    if r.starts_with("501") && REFUSED_BY_SMTP.contains(&c.name.as_str()) {
        return Ok(("refused".into(), None));
    }
    if !r.starts_with("250") {
        return Err(format!("EHLO refused: {r}"));
    }
    // A local part with a space is sent quoted, the only way SMTP can carry it.
    let from = match c.mailfrom.rsplit_once('@') {
        Some((l, d)) if l.contains(' ') => format!("\"{l}\"@{d}"),
        _ => c.mailfrom.clone(),
    };
    let r = smtp.cmd(&format!("MAIL FROM:<{from}>"));
    if r.starts_with("501") && REFUSED_BY_SMTP.contains(&c.name.as_str()) {
        return Ok(("refused".into(), None));
    }
    if r.starts_with("550") && r.contains("SPF fail") {
        let why = r.trim_end().split_once(": ").map(|(_, w)| w.to_string());
        smtp.cmd("QUIT");
        return Ok(("fail".into(), why));
    }
    if !r.starts_with("250") {
        return Err(format!("MAIL FROM refused: {}", r.trim_end()));
    }
    let r = smtp.cmd("RCPT TO:<postmaster@example.test>");
    if !r.starts_with("250") {
        return Err(format!("RCPT refused: {}", r.trim_end()));
    }
    smtp.cmd("DATA");
    let r = smtp.cmd(&format!("Subject: spf-case-{n}\r\n\r\n{}\r\n.", c.name));
    if !r.starts_with("250") {
        return Err(format!("DATA refused: {}", r.trim_end()));
    }
    smtp.cmd("QUIT");
    let subject = format!("Subject: spf-case-{n}\n");
    let msg = mailgate_tests::wait_for(Duration::from_secs(20), || {
        Gateway::maildir_files(&gw.path("mail"), "postmaster")
            .into_iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .find(|m| m.contains(&subject))
    })
    .ok_or("message not delivered")?;
    let spf = msg.split("spf=").nth(1).ok_or("no spf= in Authentication-Results")?;
    Ok((spf.split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or_default().to_string(), None))
}

#[test]
fn rfc7208_suite_through_the_gateway() {
    let path = suite_path();
    let yaml = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/deps.sh fetches the suite)", path.display()));
    let docs = YamlLoader::load_from_str(&yaml).expect("the suite parses");
    let scenarios: Vec<(String, Zone, Vec<Case>)> = docs
        .iter()
        .map(|d| (text(&d["description"]).unwrap_or_default(), zone(&d["zonedata"]), cases(&d["tests"])))
        .collect();
    let mut hosts: Vec<IpAddr> = scenarios.iter().flat_map(|(_, _, cs)| cs.iter().map(|c| c.host)).collect();
    hosts.sort();
    hosts.dedup();
    enter_namespace(&hosts);

    let spf = Gateway::plugin(
        "spf",
        "spf",
        "stages = [\"mail_from\"]",
        "stage = \"mail_from\"\nsoftfail = \"accept\"\npermerror = \"accept\"\ntemperror = \"accept\"",
    );
    let (mut total, mut failed) = (0, vec![]);
    for (n_s, (description, zone, cases)) in scenarios.into_iter().enumerate() {
        let dns = ZoneDns::start(zone);
        let port = free_port();
        let gw = Gateway::with_sink(
            free_port(),
            &format!(
                "{}\n[auth]\nalways = [\"spf\"]\n{spf}\n[[listener]]\nname = \"dual\"\naddress = \"[::]:{port}\"\n",
                dns.config("500ms")
            ),
        );
        assert!(
            mailgate_tests::wait_for(Duration::from_secs(10), || TcpStream::connect(("::1", port)).ok()).is_some(),
            "the [::] listener did not come up"
        );
        for (i, c) in cases.iter().enumerate() {
            if NOT_SERVABLE.contains(&c.name.as_str()) {
                continue;
            }
            total += 1;
            match run_case(&gw, port, c, n_s * 1000 + i) {
                Ok((got, why)) => {
                    let refused = REFUSED_BY_SMTP.contains(&c.name.as_str());
                    let result_ok = if refused { got == "refused" } else { c.results.contains(&got) };
                    // "DEFAULT": no explanation of the domain's own.
                    let exp_ok = match (&c.explanation, got.as_str()) {
                        (Some(e), "fail") if e == "DEFAULT" => {
                            why.as_deref().is_none_or(|w| w.contains("may not send"))
                        }
                        (Some(e), "fail") => why.as_deref() == Some(e.as_str()),
                        _ => true,
                    };
                    if !result_ok || !exp_ok {
                        failed.push(format!(
                            "{description} / {}: want {:?}{}, got {got}{}",
                            c.name,
                            c.results,
                            c.explanation.as_ref().map(|e| format!(" ({e})")).unwrap_or_default(),
                            why.map(|w| format!(" ({w})")).unwrap_or_default()
                        ));
                    }
                }
                Err(e) => failed.push(format!("{description} / {}: {e}", c.name)),
            }
        }
        drop(gw);
    }
    eprintln!(
        "RFC 7208 suite through the gateway: {} of {total} pass ({} of them refused in SMTP, as they must be)",
        total - failed.len(),
        REFUSED_BY_SMTP.len()
    );
    assert!(failed.is_empty(), "{} of {total} failed:\n{}", failed.len(), failed.join("\n"));
}
