//! The queue's stages run on a pool of chains: a routing that waits on DNS does not hold up
//! the routing of another message. Shown by events, not by time: a DNS server that holds every
//! query until told sees the second routing's query arrive while the first is still held.

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use mailgate_config::{Config, Grant, OnError, Plugin, Stage};
use mailgate_plugin_host::bindings::types::Envelope;
use mailgate_plugin_host::{MemoryKv, Plugins, RouteDecision};

/// A DNS server on loopback that records the names asked and answers NXDOMAIN only once
/// released.
struct HoldingDns {
    port: u16,
    names: Arc<Mutex<BTreeSet<String>>>,
    release: Arc<Mutex<bool>>,
}

impl HoldingDns {
    fn start() -> HoldingDns {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        sock.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let (names, release) = (Arc::new(Mutex::new(BTreeSet::new())), Arc::new(Mutex::new(false)));
        let (n, r) = (names.clone(), release.clone());
        std::thread::spawn(move || {
            let mut held: Vec<(Vec<u8>, std::net::SocketAddr)> = vec![];
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                let mut buf = [0u8; 512];
                if let Ok((len, from)) = sock.recv_from(&mut buf) {
                    let q = buf[..len].to_vec();
                    n.lock().unwrap().insert(qname(&q));
                    held.push((q, from));
                }
                if *r.lock().unwrap() {
                    for (mut q, from) in held.drain(..) {
                        // Same id and question; QR=1, RD/RA, RCODE=3 (NXDOMAIN), no answers.
                        q[2] |= 0x80;
                        q[3] = 0x83;
                        let _ = sock.send_to(&q, from);
                    }
                }
            }
        });
        HoldingDns { port, names, release }
    }

    fn wait_for_names(&self, n: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.names.lock().unwrap().len() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

/// The first name of a DNS query, dotted.
fn qname(q: &[u8]) -> String {
    let (mut at, mut labels) = (12, vec![]);
    while at < q.len() && q[at] != 0 {
        let len = q[at] as usize;
        labels.push(String::from_utf8_lossy(&q[at + 1..(at + 1 + len).min(q.len())]).into_owned());
        at += 1 + len;
    }
    labels.join(".").to_ascii_lowercase()
}

fn dist(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins/dist").join(format!("{name}.wasm"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_waiting_on_dns_does_not_hold_up_another() {
    let dns = HoldingDns::start();
    let mut udp = ConnectionConfig::udp();
    udp.port = dns.port;
    let cfg = ResolverConfig::from_name_servers(vec![NameServerConfig::new([127, 0, 0, 1].into(), true, vec![udp])]);
    let mut builder = TokioResolver::builder_with_config(cfg, TokioRuntimeProvider::default());
    builder.options_mut().timeout = Duration::from_secs(30);
    builder.options_mut().attempts = 1;
    let resolver = builder.build().unwrap();
    let mut config = Config::default();
    config.plugins = vec![Plugin {
        name: "probe".into(),
        path: dist("dns-probe"),
        stages: vec![Stage::Route],
        on_error: OnError::Skip,
        cpu_budget: Duration::from_millis(500),
        memory_limit: 16 << 20,
        grants: vec![Grant::Dns],
        allowed_routes: vec![],
        data: Default::default(),
        mode: Default::default(),
        config: [("name".to_string(), serde_json::json!("probe.test"))].into_iter().collect(),
    }];
    let plugins = Plugins::load(&config, Some(resolver), Arc::new(MemoryKv::new(100))).expect("run plugins/build.sh");
    let queue = Arc::new(plugins.queue());
    let env = Arc::new(Envelope {
        mail_from: "a@b.test".into(),
        rcpt_to: vec![],
        body_8bit: false,
        smtputf8: false,
        size_hint: None,
    });
    let route = |rcpt: &'static str| {
        let (q, e) = (queue.clone(), env.clone());
        tokio::spawn(async move { q.on_route(mailgate_config::DEFAULT_PIPELINE, &e, rcpt).await })
    };
    let first = route("one@x.test");
    assert!(dns.wait_for_names(1), "the first routing asked nothing");
    let second = route("two@x.test");
    // The first routing still waits for its answer; the second asks its own meanwhile.
    assert!(dns.wait_for_names(2), "the second routing waited for the first: {:?}", dns.names.lock().unwrap());
    assert!(!first.is_finished());
    *dns.release.lock().unwrap() = true;
    for r in [first, second] {
        assert!(matches!(r.await.unwrap().decision, RouteDecision::Default));
    }
    let names = dns.names.lock().unwrap().clone();
    assert!(names.contains("one.probe.test") && names.contains("two.probe.test"), "{names:?}");
}
