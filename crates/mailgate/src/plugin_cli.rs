//! `mailgate plugin check` and `mailgate plugin test`: try a plugin without a gateway or a
//! network — one simulated transaction through every stage, printing what it answered.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mailgate_cleanup::{Cleanup, DataPolicy, Incoming, Origin, Outcome, PolicyAnswer, Signing, Verdict};
use mailgate_config::{Config, Grant, OnError, Plugin, Stage};
use mailgate_plugin_host::bindings::types;
use mailgate_plugin_host::{Decision, MemoryKv, Plugins, RouteDecision};
use mailgate_spool::{BoxFuture, Envelope};

use crate::plugins::{wit_envelope, ChainPolicy};

/// The plugin as the on-data policy, remembering its answer to print it.
struct Recording<'a> {
    inner: ChainPolicy<'a>,
    seen: Option<PolicyAnswer>,
}

impl DataPolicy for Recording<'_> {
    fn on_data<'a>(&'a mut self, env: &'a Envelope, data: Arc<Vec<u8>>) -> BoxFuture<'a, PolicyAnswer> {
        Box::pin(async move {
            let answer = self.inner.on_data(env, data).await;
            self.seen = Some(answer.clone());
            answer
        })
    }
}

/// What `plugin test` simulates.
pub struct TestRun {
    pub wasm: PathBuf,
    pub eml: Option<PathBuf>,
    pub from: String,
    pub rcpts: Vec<String>,
    pub helo: String,
    pub client_ip: String,
    /// The plugin's config table, as TOML text.
    pub config: Option<String>,
    pub grants: Vec<Grant>,
}

pub fn plugin_entry(wasm: &Path, table: Option<&str>, grants: Vec<Grant>) -> Result<Plugin, String> {
    let config = match table {
        Some(t) => {
            let v: toml::Table = toml::from_str(t).map_err(|e| format!("--config: {e}"))?;
            serde_json::to_value(v)
                .map_err(|e| e.to_string())?
                .as_object()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .collect()
        }
        None => Default::default(),
    };
    Ok(Plugin {
        name: wasm
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin")
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"),
        path: wasm.to_path_buf(),
        stages: Stage::ALL.to_vec(),
        on_error: OnError::Tempfail,
        cpu_budget: std::time::Duration::from_millis(500),
        memory_limit: 64 << 20,
        grants,
        allowed_routes: vec![],
        data: Default::default(),
        mode: Default::default(),
        config,
    })
}

pub fn load(p: Plugin) -> Result<Arc<Plugins>, String> {
    let mut cfg = Config::default();
    cfg.limits.max_sessions = 2;
    cfg.plugins = vec![p];
    Plugins::load(&cfg, None, Arc::new(MemoryKv::new(10_000))).map_err(|e| e.to_string())
}

/// Says whether a file is a component that satisfies the `filter` world.
pub fn check(wasm: &Path) -> Result<String, String> {
    let plugins = load(plugin_entry(wasm, None, vec![])?)?;
    let (name, hash) = plugins.describe().remove(0);
    Ok(format!("{}: OK — a mailgate:plugin/filter component ({name}, fingerprint {hash})", wasm.display()))
}

/// The connection of a simulated session from `client_ip` that said HELO `helo`.
pub fn test_conn(client_ip: &str, helo: &str) -> types::ConnectionInfo {
    types::ConnectionInfo {
        session_id: "plugin-test".into(),
        client_ip: client_ip.to_string(),
        client_port: 50000,
        local_ip: "127.0.0.1".into(),
        local_port: 25,
        listener: "test".into(),
        tls: None,
        helo: Some(helo.to_string()),
        authenticated_as: None,
        trusted: false,
    }
}

/// Runs one simulated transaction and prints each stage's answer.
pub async fn test(run: TestRun) -> Result<(), String> {
    let plugins = load(plugin_entry(&run.wasm, run.config.as_deref(), run.grants.clone())?)?;
    if let Some((_, why)) = plugins.check_init().await.into_iter().next() {
        return Err(format!("the plugin does not start with this config: {why}"));
    }
    let mut chain = plugins.session("plugin-test", mailgate_config::DEFAULT_PIPELINE);
    let mut conn = test_conn(&run.client_ip, "");
    conn.helo = None;
    println!("connect: {}", show(chain.on_connect(&conn).await));
    println!("helo {}: {}", run.helo, show(chain.on_helo(&conn, &run.helo).await));
    conn.helo = Some(run.helo.clone());
    let mut env = wit_envelope(&run.from, vec![], false, false, None);
    println!("mail from <{}>: {}", run.from, show(chain.on_mail_from(&conn, env.clone()).await));
    for r in &run.rcpts {
        println!("rcpt <{r}>: {}", show(chain.on_rcpt(&conn, r).await));
        chain.add_recipient(r);
        env.rcpt_to.push(r.clone());
    }
    let raw = match &run.eml {
        Some(p) => std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => b"From: <sender@example.test>\r\nSubject: plugin test\r\n\r\nHello.\r\n".to_vec(),
    };
    let raw = mailgate_smtp::content::to_crlf(&raw);
    // The message takes the gateway's own path: the cleanup stage with this plugin as its
    // on-data policy, stopping short of the spool.
    let config = Arc::new(Config::default());
    let cleanup = Cleanup::new(config, Signing::none(), mailgate_cleanup::Maps::default());
    let ip = run.client_ip.parse().map_err(|_| format!("--client-ip {}: not an IP address", run.client_ip))?;
    let origin = Origin {
        client: Some((run.helo.clone(), ip)),
        with: Some("ESMTP".into()),
        listener: "test".into(),
        ..Origin::default()
    };
    let mut envelope = mailgate_cleanup::envelope("PLUGINTEST".into(), run.from.clone(), run.rcpts.clone());
    envelope.client = format!("{} ({ip})", run.helo);
    let incoming = Incoming { envelope, data: raw, hold: None, traced: false };
    let mut policy = Recording { inner: ChainPolicy { chain: &mut chain, conn: Arc::new(conn.clone()) }, seen: None };
    let result = cleanup.process(incoming, &origin, Some(&mut policy)).await;
    match (&policy.seen, &result) {
        (None, Err(e)) => println!("data: refused before any plugin: {}", e.reply()),
        (None, Ok(_)) => println!("data: the plugin was not asked"),
        (Some(answer), _) => {
            let verdict = match &answer.verdict {
                Verdict::Continue => "next".to_string(),
                Verdict::Reply(r) => format!("reply {r}"),
                Verdict::Disconnect(r) => format!("disconnect {r}"),
                Verdict::Quarantine(why) => format!("quarantine ({why})"),
                Verdict::Discard => "discard".to_string(),
            };
            println!("data: {verdict}");
            let c = &answer.changes;
            for m in &c.content {
                println!("  modification: {m:?}");
            }
            if let Some(s) = &c.sender {
                println!("  modification: sender <{s}>");
            }
            for r in &c.add_rcpts {
                println!("  modification: add recipient <{r}>");
            }
            for r in &c.remove_rcpts {
                println!("  modification: remove recipient <{r}>");
            }
            if let Some(r) = &c.route {
                println!("  modification: route {r:?}");
            }
            for r in &c.refused {
                println!("  refused modification: {r}");
            }
        }
    }
    match result {
        Ok(Outcome::Kept(p)) => {
            let head = mailgate_queue::dsn::headers_of(&p.data);
            println!("stored header section (after cleanup):\n{}", String::from_utf8_lossy(head).trim_end());
        }
        Ok(Outcome::Dropped { why, .. }) => println!("not stored: {why:?}"),
        Err(e) => println!("not stored: {}", e.reply()),
    }
    let queue = plugins.queue();
    let env = Arc::new(env);
    for r in &run.rcpts {
        let routed = queue.on_route(mailgate_config::DEFAULT_PIPELINE, &env, r).await;
        let mut route = match routed.decision {
            RouteDecision::Default => "configured route".to_string(),
            RouteDecision::Route(route) => format!("{:?}", crate::plugins::route_choice(&route)),
            RouteDecision::Reply(reply) => format!("reply {reply}"),
        };
        if let Some(p) = routed.pool {
            route.push_str(&format!(", pool {p}"));
        }
        if let Some(c) = routed.shaping {
            route.push_str(&format!(", shaping class {c}"));
        }
        println!("route <{r}>: {route}");
    }
    match chain.failures() {
        0 => Ok(()),
        n => Err(format!("the plugin failed {n} time(s) (logged above); the gateway would answer per on_error")),
    }
}

fn show(d: Decision) -> String {
    match d {
        Decision::Next => "next".into(),
        Decision::Accept => "accept".into(),
        Decision::Reply(r) => format!("reply {r}"),
        Decision::Disconnect(r) => format!("disconnect {r}"),
    }
}
