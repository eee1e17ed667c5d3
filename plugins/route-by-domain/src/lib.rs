//! route-by-domain: picks the delivery route of each recipient from a per-domain table.
//!
//! Config: `routes = ["DOMAIN=ROUTE", ...]` and an optional `default = "ROUTE"`, where ROUTE
//! is `mx:DOMAIN`, `smarthost:HOST:PORT`, `maildir:PATH`, `discard`, `hold` or
//! `reject:CODE ENHANCED TEXT` (the SDK's `Route` text form).

use mailgate_plugin_sdk::prelude::*;

#[derive(Default)]
struct RouteByDomain {
    /// (lower-case domain, route) pairs in config order.
    routes: Vec<(String, Route)>,
    /// Route for domains not in `routes`; none leaves them to later plugins / the default.
    fallback: Option<Route>,
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
        log::debug!("route-by-domain: {} routes", self.routes.len());
        Ok(())
    }

    fn on_route(&mut self, _env: &Envelope, rcpt: &str) -> RouteResult {
        let domain = domain_of(rcpt).unwrap_or_default();
        let found = self.routes.iter().find(|(d, _)| *d == domain).map(|(_, r)| r);
        match found.or(self.fallback.as_ref()) {
            Some(route) => RouteResult::accept(route.clone()),
            None => RouteResult::next(),
        }
    }
}

export!(RouteByDomain);
