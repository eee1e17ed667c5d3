//! `mailgate api-key create|list|revoke`: the sending API's keys, in the keys file of the
//! spool directory the configuration names. The running gateway sees a change within a second.

use std::path::Path;
use std::process::ExitCode;

use mailgate_api::KeyStore;
use mailgate_config::Config;

/// `N`, `N/min`, `N/s` or `N/h` as messages per minute.
pub(crate) fn parse_rate(s: &str) -> Result<u32, String> {
    let (n, unit) = s.split_once('/').unwrap_or((s, "min"));
    let n: u32 = n.trim().parse().map_err(|_| format!("{s:?}: expected N/min, N/s or N/h"))?;
    let per_min = match unit.trim() {
        "min" | "m" => Some(n),
        "s" | "sec" => n.checked_mul(60),
        "h" | "hour" => Some(n.div_ceil(60)),
        _ => None,
    };
    per_min.filter(|n| *n > 0).ok_or_else(|| format!("{s:?}: expected a positive N/min, N/s or N/h"))
}

fn store(config: Option<&Path>) -> Result<KeyStore, String> {
    let cfg = Config::load(config).map_err(|e| e.to_string())?;
    Ok(KeyStore::in_spool(&cfg.spool.path))
}

fn fail(what: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("api-key {what}: {e}");
    ExitCode::from(1)
}

pub(crate) fn create(
    config: Option<&Path>,
    name: &str,
    allow_from: Vec<String>,
    rate: Option<u32>,
    pool: Option<String>,
) -> ExitCode {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return fail("create", e),
    };
    if let Some(p) = pool.as_ref().filter(|p| !cfg.pools.iter().any(|q| &q.name == *p)) {
        return fail("create", format!("the configuration has no [[pool]] named {p:?}"));
    }
    let store = KeyStore::in_spool(&cfg.spool.path);
    match store.create(name, allow_from, rate, pool) {
        Ok((key, stored)) => {
            println!("{key}");
            eprintln!(
                "key {:?} created; it is shown only now (the gateway keeps its hash in {}). Senders: {}. Rate: {}.",
                stored.name,
                store.path().display(),
                if stored.allow_from.is_empty() { "any domain".to_string() } else { stored.allow_from.join(", ") },
                stored.rate_per_min.map_or("unlimited".to_string(), |r| format!("{r}/min")),
            );
            if let Some(p) = &stored.pool {
                eprintln!("its mail leaves from the source pool {p:?}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail("create", e),
    }
}

pub(crate) fn list(config: Option<&Path>, json: bool) -> ExitCode {
    let keys = match store(config).and_then(|s| s.list().map_err(|e| e.to_string())) {
        Ok(k) => k,
        Err(e) => return fail("list", e),
    };
    if json {
        let v: Vec<_> = keys
            .iter()
            .map(|k| {
                serde_json::json!({ "name": k.name, "prefix": k.prefix, "allow_from": k.allow_from,
                    "rate_per_min": k.rate_per_min, "created": k.created, "revoked": k.revoked })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    for k in &keys {
        println!(
            "{:<24} {}…  {:<8} senders: {:<30} rate: {}",
            k.name,
            k.prefix,
            if k.revoked.is_some() { "revoked" } else { "active" },
            if k.allow_from.is_empty() { "any".to_string() } else { k.allow_from.join(",") },
            k.rate_per_min.map_or("unlimited".to_string(), |r| format!("{r}/min")),
        );
    }
    println!("{} key(s)", keys.len());
    ExitCode::SUCCESS
}

pub(crate) fn revoke(config: Option<&Path>, name: &str) -> ExitCode {
    match store(config).and_then(|s| s.revoke(name).map_err(|e| e.to_string())) {
        Ok(()) => {
            println!("key {name:?} revoked");
            ExitCode::SUCCESS
        }
        Err(e) => fail("revoke", e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates() {
        use super::parse_rate as p;
        assert_eq!(p("600"), Ok(600));
        assert_eq!(p("600/min"), Ok(600));
        assert_eq!(p("10/s"), Ok(600));
        assert_eq!(p("90/h"), Ok(2));
        assert!(p("0/min").is_err() && p("x").is_err() && p("5/week").is_err());
    }
}
