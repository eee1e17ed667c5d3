//! What the queue asks outside itself about each recipient: a route (the plugins' on-route) and
//! who wants to hear about each attempt (on-delivery-result). The queue knows this trait, not
//! plugins.

use mailgate_config::{Route, TlsPolicy};
use mailgate_delivery::RcptOutcome;
use mailgate_spool::{BoxFuture, Envelope};

pub trait Hooks: Send + Sync + 'static {
    /// A route for one recipient in the text form of [`parse_route`], or `None` for the
    /// configured route.
    fn route<'a>(&'a self, env: &'a Envelope, rcpt: &'a str) -> BoxFuture<'a, Option<String>>;

    /// One recipient's outcome of one attempt.
    fn delivery_result<'a>(&'a self, env: &'a Envelope, rcpt: &'a str, outcome: &'a RcptOutcome) -> BoxFuture<'a, ()>;
}

/// A route chosen outside the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chosen {
    /// Deliver by this route; for `mx`, to this domain's MX.
    Route(Route, Option<String>),
    /// Keep it queued without trying.
    Hold,
    /// Fail (5xx) or defer (4xx) the recipient with this reply.
    Reply(String),
}

/// Parses `mx:DOMAIN`, `smarthost:HOST:PORT`, `maildir:PATH`, `discard`, `hold` or
/// `reject:CODE ENH TEXT`.
pub fn parse_route(s: &str) -> Result<Chosen, String> {
    let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
    match kind {
        "mx" if !rest.is_empty() => {
            Ok(Chosen::Route(Route::Mx { tls: TlsPolicy::Opportunistic }, Some(rest.to_ascii_lowercase())))
        }
        "smarthost" => {
            let (host, port) = rest.rsplit_once(':').ok_or("smarthost:HOST:PORT")?;
            let port: u16 = port.parse().map_err(|_| "bad smarthost port")?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            if host.is_empty() || port == 0 {
                return Err("smarthost:HOST:PORT".into());
            }
            Ok(Chosen::Route(Route::Smarthost { host, port, tls: TlsPolicy::Opportunistic, ca_file: None }, None))
        }
        "maildir" if !rest.is_empty() => Ok(Chosen::Route(Route::Maildir { path: rest.into() }, None)),
        "discard" => Ok(Chosen::Route(Route::Discard, None)),
        "hold" => Ok(Chosen::Hold),
        "reject" if rest.starts_with(['4', '5']) => Ok(Chosen::Reply(rest.to_string())),
        _ => Err(format!("unknown route {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_route_texts() {
        assert_eq!(
            parse_route("smarthost:127.0.0.1:2526").unwrap(),
            Chosen::Route(
                Route::Smarthost { host: "127.0.0.1".into(), port: 2526, tls: TlsPolicy::Opportunistic, ca_file: None },
                None
            )
        );
        assert_eq!(
            parse_route("mx:Example.ORG").unwrap(),
            Chosen::Route(Route::Mx { tls: TlsPolicy::Opportunistic }, Some("example.org".into()))
        );
        assert_eq!(parse_route("hold").unwrap(), Chosen::Hold);
        assert_eq!(parse_route("reject:550 5.7.1 no").unwrap(), Chosen::Reply("550 5.7.1 no".into()));
        assert!(parse_route("smarthost:x").is_err());
        assert!(parse_route("teleport").is_err());
    }
}
