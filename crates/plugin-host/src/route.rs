//! The route grant: which delivery routes a plugin may choose (at on-data with `set-route`,
//! at on-route with its answer). A plugin is a policy, not an operator: it may pick `mx`,
//! `discard`, `hold` or `reject` freely, but a smarthost or a maildir only when the operator
//! configured that very one, in `[routes]` or, with `grants = ["route"]`, in the plugin's
//! `allowed_routes`. Anything else would let a plugin write files anywhere the gateway may, or
//! connect anywhere: it is refused as that plugin's failure (its `on_error`), and logged.

use std::path::{Path, PathBuf};

use mailgate_config::{AllowedRoute, Config, Grant, Plugin, Route as Configured};

use crate::bindings::types::Route;

/// A route a plugin named but may not choose.
#[derive(Debug, thiserror::Error)]
pub enum RouteRefused {
    #[error("route smarthost:{0}:{1} is not configured for this plugin")]
    Smarthost(String, u16),
    #[error("route maildir:{0} is not configured for this plugin")]
    Maildir(String),
}

/// The smarthosts and maildirs one plugin may name.
#[derive(Debug, Default, Clone)]
pub struct RoutePolicy {
    smarthosts: Vec<(String, u16)>,
    maildirs: Vec<PathBuf>,
}

impl RoutePolicy {
    /// The operator's `[routes]`, plus the plugin's `allowed_routes` when it has the grant.
    pub fn new(cfg: &Config, plugin: &Plugin) -> RoutePolicy {
        let mut p = RoutePolicy::default();
        for r in cfg.routes.values() {
            match r {
                Configured::Smarthost { host, port, .. } => p.smarthosts.push((host.to_ascii_lowercase(), *port)),
                Configured::Maildir { path } => p.maildirs.push(path.clone()),
                Configured::Mx { .. } | Configured::Lmtp { .. } | Configured::Discard => {}
            }
        }
        if plugin.granted(Grant::Route) {
            for r in plugin.allowed_routes.iter().filter_map(|r| mailgate_config::parse_allowed_route(r)) {
                match r {
                    AllowedRoute::Smarthost(h, port) => p.smarthosts.push((h, port)),
                    AllowedRoute::Maildir(path) => p.maildirs.push(path),
                }
            }
        }
        p
    }

    /// `Err` when the plugin may not choose `r`.
    pub(crate) fn check(&self, r: &Route) -> Result<(), RouteRefused> {
        match r {
            Route::Mx(_) | Route::Discard | Route::Hold | Route::Reject(_) => Ok(()),
            Route::Smarthost((host, port)) => {
                let host = host.to_ascii_lowercase();
                if self.smarthosts.iter().any(|(h, p)| *h == host && p == port) {
                    Ok(())
                } else {
                    Err(RouteRefused::Smarthost(host, *port))
                }
            }
            Route::Maildir(path) => {
                // Exactly a configured path: no prefix matching, so `..` cannot walk out of it.
                if self.maildirs.iter().any(|m| m.as_path() == Path::new(path)) {
                    Ok(())
                } else {
                    Err(RouteRefused::Maildir(path.clone()))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_or_granted_targets() {
        let mut cfg = Config::default();
        cfg.routes.insert("a.test".into(), Configured::Maildir { path: "/var/mail/a".into() });
        cfg.routes.insert(
            "*".into(),
            Configured::Smarthost {
                host: "Relay.Test".into(),
                port: 2525,
                tls: Default::default(),
                ca_file: None,
                auth: None,
                pool: None,
            },
        );
        let mut plugin: Plugin = serde_json::from_value(serde_json::json!({"name": "p", "path": "/x.wasm"})).unwrap();
        let p = RoutePolicy::new(&cfg, &plugin);
        assert!(p.check(&Route::Mx("any.test".into())).is_ok());
        assert!(p.check(&Route::Discard).is_ok());
        assert!(p.check(&Route::Maildir("/var/mail/a".into())).is_ok());
        assert!(p.check(&Route::Maildir("/var/mail/a/../../../etc".into())).is_err());
        assert!(p.check(&Route::Maildir("/tmp/evil".into())).is_err());
        assert!(p.check(&Route::Smarthost(("relay.test".into(), 2525))).is_ok());
        assert!(p.check(&Route::Smarthost(("relay.test".into(), 25))).is_err());
        assert!(p.check(&Route::Smarthost(("10.0.0.1".into(), 2525))).is_err());
        // Listed without the grant: still refused; with it: allowed.
        plugin.allowed_routes = vec!["smarthost:10.0.0.1:2525".into(), "maildir:/srv/x".into()];
        assert!(RoutePolicy::new(&cfg, &plugin).check(&Route::Smarthost(("10.0.0.1".into(), 2525))).is_err());
        plugin.grants = vec![Grant::Route];
        let p = RoutePolicy::new(&cfg, &plugin);
        assert!(p.check(&Route::Smarthost(("10.0.0.1".into(), 2525))).is_ok());
        assert!(p.check(&Route::Maildir("/srv/x".into())).is_ok());
    }
}
