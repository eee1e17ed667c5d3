//! The crate boundaries, read from `cargo metadata`: each crate knows only what its `lib.rs`
//! says it may. A dependency that crosses a boundary fails here, not in a review.

use std::collections::BTreeMap;
use std::process::Command;

/// Every workspace package with the workspace packages it depends on (normal and build
/// dependencies; dev-dependencies are tests' business).
fn workspace_deps() -> BTreeMap<String, Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = mailgate_tests::gateway::repo_root();
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(&root)
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let names: Vec<String> = packages.iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .filter_map(|d| d["name"].as_str())
                .filter(|d| names.iter().any(|n| n == d))
                .map(str::to_string)
                .collect();
            (p["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

#[test]
fn crate_boundaries_hold() {
    let deps = workspace_deps();
    let of = |name: &str| deps.get(name).unwrap_or_else(|| panic!("no package {name}: {:?}", deps.keys()));
    // The protocol crate is sans-IO and stands alone.
    assert!(of("mailgate-smtp").is_empty(), "mailgate-smtp depends on {:?}", of("mailgate-smtp"));
    // Storage and delivery know nothing of plugins.
    for c in ["mailgate-spool", "mailgate-delivery", "mailgate-message", "mailgate-queue", "mailgate-cleanup"] {
        assert!(!of(c).iter().any(|d| d == "mailgate-plugin-host"), "{c} depends on the plugin host: {:?}", of(c));
    }
    // The spool does not interpret what it stores.
    assert!(of("mailgate-spool").is_empty(), "mailgate-spool depends on {:?}", of("mailgate-spool"));
    // The cleanup stage is below the queue and the sessions: it knows neither (the queue
    // passes its DSNs through it; sessions hand it their messages).
    for c in ["mailgate-queue", "mailgate-delivery"] {
        assert!(!of("mailgate-cleanup").iter().any(|d| d == c), "mailgate-cleanup depends on {c}");
    }
    // No library depends on the binary crate.
    for (name, d) in &deps {
        if name != "mailgate-tests" {
            assert!(!d.iter().any(|x| x == "mailgate"), "{name} depends on the mailgate binary crate");
        }
    }
    // The sending API is an HTTP way in: it hands submissions to the gateway through its
    // `Gate` trait and knows neither plugins, the cleanup stage, the queue nor delivery.
    for c in ["mailgate-plugin-host", "mailgate-cleanup", "mailgate-queue", "mailgate-delivery"] {
        assert!(!of("mailgate-api").iter().any(|d| d == c), "mailgate-api depends on {c}");
    }
    // Events know where events come from only as an envelope, and nothing of where they go.
    let events: Vec<&String> = of("mailgate-events").iter().collect();
    assert_eq!(events, ["mailgate-spool"], "mailgate-events depends on {events:?}");
    // Webhooks read the event log and their config, nothing else.
    let mut hooks = of("mailgate-webhooks").clone();
    hooks.sort();
    assert_eq!(hooks, ["mailgate-config", "mailgate-events"], "mailgate-webhooks depends on {hooks:?}");
    // Bounce handling (VERP, reports, suppression) stands alone: the gateway wires it to
    // sessions, the API and the event log.
    assert!(of("mailgate-bounces").is_empty(), "mailgate-bounces depends on {:?}", of("mailgate-bounces"));
    // Recipient verification answers from its config and the delivery crate's probe; it knows
    // nothing of sessions, plugins or the queue.
    let mut verify = of("mailgate-verify").clone();
    verify.sort();
    assert_eq!(verify, ["mailgate-config", "mailgate-delivery"], "mailgate-verify depends on {verify:?}");
    // MTA-STS is data and one HTTPS fetch: no DNS of its own, no config, nothing of delivery.
    assert!(of("mailgate-mtasts").is_empty(), "mailgate-mtasts depends on {:?}", of("mailgate-mtasts"));
    // TLS reports are counts, files and rendering: no DNS, no config, nothing of how sessions
    // are made or how a report message reaches the queue.
    assert!(of("mailgate-tlsrpt").is_empty(), "mailgate-tlsrpt depends on {:?}", of("mailgate-tlsrpt"));
    // Shaping is limiters over its config: nothing of the queue, SMTP or the spool.
    let shaping: Vec<&String> = of("mailgate-shaping").iter().collect();
    assert_eq!(shaping, ["mailgate-config"], "mailgate-shaping depends on {shaping:?}");
    // Address maps are pure lookups over the config.
    let rewrite: Vec<&String> = of("mailgate-rewrite").iter().collect();
    assert_eq!(rewrite, ["mailgate-config"], "mailgate-rewrite depends on {rewrite:?}");
}
