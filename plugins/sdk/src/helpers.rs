//! Constructors and small conveniences on the generated WIT types.

use std::{fmt, str::FromStr};

use crate::{DataResult, EnvelopeData, Modification, Reply, Route, RouteResult, Verdict};

impl Reply {
    /// A reply with this code (e.g. 550), enhanced code (e.g. "5.7.1", or "" for the host's
    /// default) and one line of text.
    pub fn new(code: u16, enhanced: impl Into<String>, text: impl Into<String>) -> Self {
        Reply { code, enhanced: enhanced.into(), text: text.into() }
    }
}

impl Verdict {
    /// `Reject` with a 5xx reply.
    pub fn reject(code: u16, enhanced: impl Into<String>, text: impl Into<String>) -> Self {
        Verdict::Reject(Reply::new(code, enhanced, text))
    }

    /// `Tempfail` with a 4xx reply.
    pub fn tempfail(code: u16, enhanced: impl Into<String>, text: impl Into<String>) -> Self {
        Verdict::Tempfail(Reply::new(code, enhanced, text))
    }

    /// `Disconnect` after sending this reply (4xx or 5xx).
    pub fn disconnect(code: u16, enhanced: impl Into<String>, text: impl Into<String>) -> Self {
        Verdict::Disconnect(Reply::new(code, enhanced, text))
    }

    /// `Quarantine` with a reason (on-data only).
    pub fn quarantine(reason: impl Into<String>) -> Self {
        Verdict::Quarantine(reason.into())
    }

    /// True for `Next`, the "no opinion" answer.
    pub fn is_next(&self) -> bool {
        matches!(self, Verdict::Next)
    }
}

impl Default for Verdict {
    /// `Next`.
    fn default() -> Self {
        Verdict::Next
    }
}

impl DataResult {
    /// No opinion and no changes.
    pub fn next() -> Self {
        Self::verdict(Verdict::Next)
    }

    /// This verdict and no changes.
    pub fn verdict(verdict: Verdict) -> Self {
        DataResult { verdict, modifications: Vec::new() }
    }

    /// Adds one change (builder style): `DataResult::next().with(Modification::add_header(..))`.
    pub fn with(mut self, change: Modification) -> Self {
        self.modifications.push(change);
        self
    }
}

impl Default for DataResult {
    /// [`DataResult::next`].
    fn default() -> Self {
        Self::next()
    }
}

impl RouteResult {
    /// No opinion: keep the current route and ask the next plugin.
    pub fn next() -> Self {
        RouteResult { route: None, verdict: Verdict::Next, pool: None, shaping: None }
    }

    /// Use `route` and ask no further plugin.
    pub fn accept(route: Route) -> Self {
        RouteResult { route: Some(route), verdict: Verdict::Accept, pool: None, shaping: None }
    }

    /// Fail, defer or drop the recipient with this verdict, choosing no route.
    pub fn verdict(verdict: Verdict) -> Self {
        RouteResult { route: None, verdict, pool: None, shaping: None }
    }

    /// The same, leaving from the operator's `[[pool]]` named `pool`.
    pub fn with_pool(mut self, pool: impl Into<String>) -> Self {
        self.pool = Some(pool.into());
        self
    }

    /// The same, counted under the operator's `[shaping.classes]` class `class`.
    pub fn with_shaping(mut self, class: impl Into<String>) -> Self {
        self.shaping = Some(class.into());
        self
    }
}

impl Default for RouteResult {
    /// [`RouteResult::next`].
    fn default() -> Self {
        Self::next()
    }
}

impl Modification {
    /// Add header field `name: value` at the top of the header, just below the gateway's own
    /// `Received:` field.
    pub fn add_header(name: impl Into<String>, value: impl Into<String>) -> Self {
        Modification::AddHeader((name.into(), value.into()))
    }

    /// Set occurrence `index` (0 = first) of header field `name` to `value`.
    pub fn change_header(name: impl Into<String>, index: u32, value: impl Into<String>) -> Self {
        Modification::ChangeHeader((name.into(), index, value.into()))
    }
}

impl EnvelopeData {
    /// True for the null sender `MAIL FROM:<>` (bounces and other DSNs).
    pub fn is_null_sender(&self) -> bool {
        self.mail_from.is_empty()
    }
}

/// The domain of an address (the text after the last `@`), lower-cased; `None` without `@`.
pub fn domain_of(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    Some(domain.trim_end_matches('.').to_ascii_lowercase())
}

/// Text form of a [`Route`], handy in config files:
/// `mx:DOMAIN`, `smarthost:HOST:PORT` (port 25 if left out; IPv6 in brackets),
/// `maildir:PATH`, `discard`, `hold`, `reject:CODE ENHANCED TEXT`.
impl FromStr for Route {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (kind, arg) = text.split_once(':').unwrap_or((text, ""));
        let need_arg = || match arg.trim() {
            "" => Err(format!("route {text:?}: `{kind}:` needs a value")),
            arg => Ok(arg.to_string()),
        };
        match kind.trim() {
            "mx" => Ok(Route::Mx(need_arg()?)),
            "maildir" => Ok(Route::Maildir(need_arg()?)),
            "smarthost" => {
                let arg = need_arg()?;
                let (host, port) = match arg.rsplit_once(':') {
                    Some((host, port)) if !port.contains(']') => (host, port),
                    _ => (arg.as_str(), "25"),
                };
                let port = port.parse().map_err(|_| format!("route {text:?}: bad port"))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                Ok(Route::Smarthost((host.to_string(), port)))
            }
            "discard" if arg.is_empty() => Ok(Route::Discard),
            "hold" if arg.is_empty() => Ok(Route::Hold),
            "reject" => {
                let arg = need_arg()?;
                let mut words = arg.splitn(3, ' ');
                let code = words.next().unwrap_or("").parse();
                let code = code.map_err(|_| format!("route {text:?}: bad reply code"))?;
                let enhanced = words.next().unwrap_or("");
                Ok(Route::Reject(Reply::new(code, enhanced, words.next().unwrap_or(""))))
            }
            _ => Err(format!(
                "route {text:?}: expected mx:, smarthost:, maildir:, discard, hold or reject:"
            )),
        }
    }
}

impl fmt::Display for Route {
    /// The same text form that [`Route::from_str`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Mx(domain) => write!(f, "mx:{domain}"),
            Route::Smarthost((host, port)) if host.contains(':') => {
                write!(f, "smarthost:[{host}]:{port}")
            }
            Route::Smarthost((host, port)) => write!(f, "smarthost:{host}:{port}"),
            Route::Maildir(path) => write!(f, "maildir:{path}"),
            Route::Discard => f.write_str("discard"),
            Route::Hold => f.write_str("hold"),
            Route::Reject(r) => write!(f, "reject:{} {} {}", r.code, r.enhanced, r.text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_round_trip() {
        for text in [
            "mx:example.net",
            "smarthost:127.0.0.1:2526",
            "smarthost:[::1]:25",
            "maildir:/var/mail/x",
            "discard",
            "hold",
            "reject:550 5.1.1 no such user",
        ] {
            let route: Route = text.parse().unwrap();
            assert_eq!(route.to_string(), text);
        }
        assert_eq!(
            "smarthost:relay.test".parse::<Route>().unwrap(),
            Route::Smarthost(("relay.test".into(), 25))
        );
        assert!("smarthost:h:notaport".parse::<Route>().is_err());
        assert!("teleport:x".parse::<Route>().is_err());
        assert!("mx:".parse::<Route>().is_err());
    }

    #[test]
    fn domains() {
        assert_eq!(domain_of("A@Example.COM").as_deref(), Some("example.com"));
        assert_eq!(domain_of("postmaster"), None);
    }
}
