//! `[shaping]`: how fast mail may leave for each destination — connections at once, messages
//! per connection, a message rate (token bucket), and a pause after a run of connection-level
//! failures — by class, picked by recipient domain (MX deliveries) and by next-hop host
//! (every SMTP/LMTP connection).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Shaping {
    /// The limits of every destination without a class of its own.
    pub default: Shape,
    /// Named limits.
    pub classes: BTreeMap<String, Shape>,
    /// Recipient domain → class, for MX deliveries: `"example.com"` (that domain),
    /// `"*.example.com"` (its subdomains); the most specific pattern wins.
    pub domains: BTreeMap<String, String>,
    /// Next-hop host name → class (MX hosts, smarthosts), across every domain they serve: the
    /// same patterns. Hosts that match none are not limited as hosts.
    pub hosts: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Shape {
    /// Deliveries (connections) at once; unset: `queue.max_per_destination`.
    pub max_connections: Option<usize>,
    /// Messages sent over one connection before it is closed; unset: no limit.
    pub max_messages_per_connection: Option<u32>,
    /// Messages per second, minute or hour (`"50/s"`, `"600/min"`, `"1000/h"`); unset: no limit.
    pub rate: Option<Rate>,
    /// Messages that may go at once after a quiet spell (the bucket's size).
    pub burst: u32,
    /// Connection-level failures in a row (no transaction: refused, 421 greeting, 4xx EHLO,
    /// TLS) after which the destination is paused; 0: never.
    pub backoff_after: u32,
    /// How long a paused destination gets no attempt (its mail is deferred meanwhile).
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            max_connections: None,
            max_messages_per_connection: None,
            rate: None,
            burst: 1,
            backoff_after: 0,
            backoff: Duration::from_secs(60),
        }
    }
}

/// A message rate, as `N/s`, `N/min` or `N/h` (also `sec`, `second`, `m`, `minute`, `hour`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
}

impl Rate {
    pub fn parse(s: &str) -> Option<Rate> {
        let (n, unit) = s.trim().split_once('/')?;
        let n: f64 = n.trim().parse().ok().filter(|n: &f64| n.is_finite() && *n > 0.0)?;
        let secs = match unit.trim() {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            _ => return None,
        };
        Some(Rate { per_second: n / secs })
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}/s", self.per_second))
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        let s = String::deserialize(d)?;
        Rate::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("rate {s:?}: give N/s, N/min or N/h")))
    }
}

impl Shaping {
    /// The class for a name (a domain or host), by `patterns`: the exact name, then
    /// `*.parent` for each parent from the nearest.
    pub fn class_of<'a>(patterns: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
        if patterns.is_empty() {
            return None;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(c) = patterns.get(&name) {
            return Some(c);
        }
        let mut rest = name.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(c) = patterns.get(&format!("*.{parent}")) {
                return Some(c);
            }
            rest = parent;
        }
        None
    }

    /// What `validate` finds wrong, as `shaping...: why` lines.
    pub(crate) fn errors(&self) -> Vec<String> {
        let mut errs = vec![];
        let shapes = std::iter::once(("default".to_string(), &self.default))
            .chain(self.classes.iter().map(|(n, s)| (format!("classes.{n}"), s)));
        for (name, s) in shapes {
            if s.max_connections == Some(0) || s.max_messages_per_connection == Some(0) || s.burst == 0 {
                errs.push(format!(
                    "shaping.{name}: max_connections, max_messages_per_connection and burst must be above 0"
                ));
            }
            if s.backoff_after > 0 && s.backoff.is_zero() {
                errs.push(format!("shaping.{name}: backoff must be above 0 when backoff_after is set"));
            }
        }
        for (table, map) in [("domains", &self.domains), ("hosts", &self.hosts)] {
            for (pattern, class) in map {
                if !self.classes.contains_key(class) {
                    errs.push(format!("shaping.{table}.{pattern}: unknown class {class:?}"));
                }
                let bare = pattern.strip_prefix("*.").unwrap_or(pattern);
                if bare.is_empty() || bare.contains('*') {
                    errs.push(format!("shaping.{table}.{pattern}: give a name or *.name"));
                }
            }
        }
        errs
    }
}
