//! route-by-domain: picks the delivery route of each recipient from a per-domain table.
//!
//! Config: `routes = ["DOMAIN=ROUTE", ...]` and an optional `default = "ROUTE"`, where ROUTE
//! is `mx:DOMAIN`, `smarthost:HOST:PORT`, `maildir:PATH`, `discard`, `hold` or
//! `reject:CODE ENHANCED TEXT` (the SDK's `Route` text form); `pools = ["DOMAIN=POOL", ...]`
//! picks the operator's source address pool and `shaping = ["DOMAIN=CLASS", ...]` the
//! operator's shaping class for a domain's recipients.

use mailgate_plugin_sdk::prelude::*;

#[derive(Default)]
struct RouteByDomain {
    /// (lower-case domain, route) pairs in config order.
    routes: Vec<(String, Route)>,
    /// Route for domains not in `routes`; none leaves them to later plugins / the default.
    fallback: Option<Route>,
    /// (lower-case domain, pool name) pairs.
    pools: Vec<(String, String)>,
    /// (lower-case domain, shaping class) pairs.
    shaping: Vec<(String, String)>,
}

/// `DOMAIN=VALUE` entries of a list key.
fn pairs(key: &str) -> Result<Vec<(String, String)>, String> {
    config::get_list(key)
        .into_iter()
        .map(|entry| {
            let (domain, value) = entry
                .split_once('=')
                .ok_or_else(|| format!("config key `{key}`: {entry:?} is not DOMAIN=VALUE"))?;
            Ok((domain.trim().trim_end_matches('.').to_ascii_lowercase(), value.trim().to_string()))
        })
        .collect()
}

impl Filter for RouteByDomain {
    fn init(&mut self) -> Result<(), String> {
        for entry in config::get_list("routes") {
            let (domain, route) = entry
                .split_once('=')
                .ok_or_else(|| format!("config key `routes`: {entry:?} is not DOMAIN=ROUTE"))?;
            let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
            self.routes.push((domain, route.trim().parse()?));
        }
        self.fallback = config::parse("default")?;
        self.pools = pairs("pools")?;
        self.shaping = pairs("shaping")?;
        log::debug!("route-by-domain: {} routes", self.routes.len());
        Ok(())
    }

    fn on_route(&mut self, _env: &Envelope, rcpt: &str) -> RouteResult {
        let domain = domain_of(rcpt).unwrap_or_default();
        let found = self.routes.iter().find(|(d, _)| *d == domain).map(|(_, r)| r);
        let mut result = match found.or(self.fallback.as_ref()) {
            Some(route) => RouteResult::accept(route.clone()),
            None => RouteResult::next(),
        };
        if let Some((_, pool)) = self.pools.iter().find(|(d, _)| *d == domain) {
            result = result.with_pool(pool.clone());
        }
        if let Some((_, class)) = self.shaping.iter().find(|(d, _)| *d == domain) {
            result = result.with_shaping(class.clone());
        }
        result
    }

    /// No hook keeps anything in `self`: an instance may be lent to any session per call.
    const KEEPS_NO_STATE: bool = true;
}

export!(RouteByDomain);
