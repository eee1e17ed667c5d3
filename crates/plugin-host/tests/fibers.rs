//! Which plugins are called on a fiber: those that import a host function that waits (DNS,
//! authentication results, kv); every other one is called on the caller's own stack. A plugin
//! classified the wrong way round would fail every call (wasmtime refuses a synchronous call
//! into an instance that may wait), or pay for a fiber it does not need. Needs plugins/build.sh.

use std::path::PathBuf;
use std::time::Duration;

use mailgate_config::{Config, OnError, Plugin, Stage};
use mailgate_plugin_host::engine::Footprint;
use mailgate_plugin_host::PluginEngine;

#[test]
fn only_plugins_that_wait_on_the_host_are_called_on_a_fiber() {
    let dist = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins/dist");
    let engine = PluginEngine::new(64, Footprint { core_instances: 3, memories: 1, tables: 2 }, 64 << 20).unwrap();
    let cfg = Config::default();
    // Their sources call mailgate_plugin_sdk's dns, auth or kv modules.
    let waiting = ["arc", "dkim", "dmarc", "dns-probe", "dnsbl", "greylist", "ratelimit", "spam", "spf"];
    let direct =
        ["add-header", "auth-static", "helo-check", "memo", "misbehave", "rcpt-allow", "route-by-domain", "verdict"];
    for name in waiting.iter().chain(&direct) {
        let path = dist.join(format!("{name}.wasm"));
        let bytes = std::fs::read(&path).expect("plugins/dist: run plugins/build.sh");
        let p = Plugin {
            name: name.to_string(),
            path,
            stages: vec![Stage::Rcpt],
            on_error: OnError::Skip,
            cpu_budget: Duration::from_millis(500),
            memory_limit: 16 << 20,
            grants: vec![],
            allowed_routes: vec![],
            data: Default::default(),
            mode: Default::default(),
            config: Default::default(),
        };
        let loaded = engine.load(&cfg, &p, &bytes).unwrap();
        assert_eq!(loaded.on_fiber(), waiting.contains(name), "{name}");
    }
}
