//! What the queue asks outside itself about each recipient: a route (the plugins' on-route) and
//! who wants to hear about each attempt (on-delivery-result). The queue knows this trait, not
//! plugins.

use mailgate_config::{Config, Route, TlsPolicy};
use mailgate_delivery::RcptOutcome;
use mailgate_smtp::{Enhanced, Reply};
use mailgate_spool::{BoxFuture, Envelope, RouteChoice};

pub trait Hooks: Send + Sync + 'static {
    /// A route for one recipient (`choice: None`: the configured one), and the source pool
    /// and shaping class to use, when the hooks pick them.
    fn route<'a>(&'a self, env: &'a Envelope, rcpt: &'a str) -> BoxFuture<'a, RouteAnswer>;

    /// One recipient's outcome of one attempt.
    fn delivery_result<'a>(&'a self, env: &'a Envelope, rcpt: &'a str, outcome: &'a RcptOutcome) -> BoxFuture<'a, ()>;
}

/// What the hooks say about one recipient's delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteAnswer {
    pub choice: Option<RouteChoice>,
    /// A `[[pool]]` name: overrides the route's.
    pub pool: Option<String>,
    /// A `[shaping.classes]` name: overrides the domain's class.
    pub shaping: Option<String>,
}

/// What a chosen route means to the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chosen {
    /// Deliver by this route; for `mx`, to this domain's MX.
    Route(Route, Option<String>),
    /// Keep it queued without trying.
    Hold,
    /// Fail (5xx) or defer (4xx) the recipient with this reply.
    Reply(Reply),
}

/// Turns a stored choice into a delivery. A smarthost the operator also configured as a route
/// keeps that route's TLS policy and CA file; any other is opportunistic.
pub fn resolve(choice: &RouteChoice, config: &Config) -> Chosen {
    match choice {
        RouteChoice::Mx { domain } => {
            Chosen::Route(Route::Mx { tls: TlsPolicy::Opportunistic, pool: None }, Some(domain.to_ascii_lowercase()))
        }
        RouteChoice::Smarthost { host, port } => {
            let configured = config.routes.values().find(
                |r| matches!(r, Route::Smarthost { host: h, port: p, .. } if h.eq_ignore_ascii_case(host) && p == port),
            );
            let route = configured.cloned().unwrap_or_else(|| Route::Smarthost {
                host: host.clone(),
                port: *port,
                tls: TlsPolicy::Opportunistic,
                ca_file: None,
                auth: None,
                pool: None,
            });
            Chosen::Route(route, None)
        }
        RouteChoice::Maildir { path } => Chosen::Route(Route::Maildir { path: path.into() }, None),
        RouteChoice::Discard => Chosen::Route(Route::Discard, None),
        RouteChoice::Hold => Chosen::Hold,
        RouteChoice::Reject { code, enhanced, text } => {
            // Only 4xx and 5xx make sense here; anything else defers for an operator to see.
            let code = if (400..600).contains(code) { *code } else { 451 };
            let default = if code >= 500 { Enhanced(5, 0, 0) } else { Enhanced(4, 0, 0) };
            let enhanced = Enhanced::parse(enhanced).filter(|e| e.0 as u16 == code / 100).unwrap_or(default);
            Chosen::Reply(Reply::new(code, enhanced, text.replace(['\r', '\n'], " ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_choices() {
        let mut config = Config::default();
        let configured = Route::Smarthost {
            host: "relay.test".into(),
            port: 2526,
            tls: TlsPolicy::Required,
            ca_file: Some("/etc/ca.pem".into()),
            auth: None,
            pool: None,
        };
        config.routes.insert("*".into(), configured.clone());
        let smarthost = |host: &str, port| resolve(&RouteChoice::Smarthost { host: host.into(), port }, &config);
        assert_eq!(smarthost("Relay.test", 2526), Chosen::Route(configured, None));
        assert_eq!(
            smarthost("127.0.0.1", 25),
            Chosen::Route(
                Route::Smarthost {
                    host: "127.0.0.1".into(),
                    port: 25,
                    tls: TlsPolicy::Opportunistic,
                    ca_file: None,
                    auth: None,
                    pool: None
                },
                None
            )
        );
        assert_eq!(
            resolve(&RouteChoice::Mx { domain: "Example.ORG".into() }, &config),
            Chosen::Route(Route::Mx { tls: TlsPolicy::Opportunistic, pool: None }, Some("example.org".into()))
        );
        assert_eq!(resolve(&RouteChoice::Hold, &config), Chosen::Hold);
        let reject = |code, enh: &str| {
            resolve(&RouteChoice::Reject { code, enhanced: enh.into(), text: "no\r\nX: y".into() }, &config)
        };
        assert_eq!(reject(550, "5.7.1"), Chosen::Reply(Reply::new(550, Enhanced(5, 7, 1), "no  X: y")));
        assert_eq!(reject(450, "5.7.1"), Chosen::Reply(Reply::new(450, Enhanced(4, 0, 0), "no  X: y")));
        assert_eq!(reject(250, ""), Chosen::Reply(Reply::new(451, Enhanced(4, 0, 0), "no  X: y")));
    }
}
