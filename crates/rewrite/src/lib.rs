//! Address maps, as an edge gateway in front of a mail store needs them: canonical rewriting
//! of the sender and the recipients (envelope, and header fields when asked), and virtual
//! aliases — an address or a whole domain to one or more addresses, catch-alls included —
//! from the config and reloadable `key<TAB>value` tables. A map that loops is refused when it
//! is loaded, so a loop never reaches a message.
//!
//! This crate owns the lookups (address, then `user@` without its `+extension`, then
//! `@domain`), alias expansion and the loop check. It must not know sessions, the spool or the
//! plugins: the cleanup stage applies it, once per message, after the on-data policy.

mod headers;
mod map;

use std::path::PathBuf;

use mailgate_config::Config;

use map::{check_value, normalize, read_table, resolve, AddrMap};

/// Alias expansion deeper than this is taken for a loop the load-time check could not see.
const MAX_DEPTH: usize = 20;
/// Most addresses one recipient may expand to.
pub const MAX_EXPANSION: usize = 1000;

/// Why maps could not be loaded, or an address not expanded.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("{0}: {1}")]
    Table(PathBuf, std::io::Error),
    #[error("{0}:{1}: {2}")]
    Line(PathBuf, usize, String),
    #[error("{0:?} is not an address or @domain")]
    Key(String),
    #[error("{0:?} is not an address or @domain")]
    Value(String),
    #[error("alias loop: {}", .0.join(" → "))]
    Loop(Vec<String>),
    #[error("{0} expands to more than {MAX_EXPANSION} addresses")]
    TooWide(String),
}

/// The address maps of one configuration generation.
#[derive(Default)]
pub struct Maps {
    sender: AddrMap<String>,
    recipient: AddrMap<String>,
    aliases: AddrMap<Vec<String>>,
    /// `relay.recipient_delimiter`: the extension separator of lookups.
    delimiter: String,
    /// Rewrite From/Sender/Reply-To/To/Cc too.
    headers: bool,
}

impl Maps {
    /// Reads the config's maps and tables, and checks that the aliases do not loop.
    pub fn load(config: &Config) -> Result<Maps, MapError> {
        let mut m = Maps {
            delimiter: config.relay.recipient_delimiter.clone(),
            headers: config.canonical.headers,
            ..Maps::default()
        };
        let c = &config.canonical;
        for (map, inline, table) in
            [(&mut m.sender, &c.sender, &c.sender_table), (&mut m.recipient, &c.recipient, &c.recipient_table)]
        {
            for (k, v) in inline {
                map.insert(k, check_value(v)?)?;
            }
            if let Some(path) = table {
                for (n, k, v) in read_table(path)? {
                    let at = |e: MapError| MapError::Line(path.clone(), n, e.to_string());
                    map.insert(&k, check_value(&v).map_err(at)?).map_err(at)?;
                }
            }
        }
        let list = |v: &[String]| v.iter().map(|a| check_value(a)).collect::<Result<Vec<_>, _>>();
        for (k, v) in &config.aliases.map {
            m.aliases.insert(k, list(v)?)?;
        }
        if let Some(path) = &config.aliases.table {
            for (n, k, v) in read_table(path)? {
                let at = |e: MapError| MapError::Line(path.clone(), n, e.to_string());
                let targets: Vec<String> =
                    v.split(',').map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect();
                m.aliases.insert(&k, list(&targets).map_err(at)?).map_err(at)?;
            }
        }
        m.check_loops()?;
        Ok(m)
    }

    /// Whether no map has anything in it (cleanup then skips the step).
    pub fn is_empty(&self) -> bool {
        self.sender.is_empty() && self.recipient.is_empty() && self.aliases.is_empty()
    }

    /// Whether `address` is an alias (its own entry, its base's or its domain's catch-all):
    /// the address exists even if no mailbox has it.
    pub fn is_alias(&self, address: &str) -> bool {
        self.aliases.find(address, &self.delimiter).is_some()
    }

    /// The sender's canonical form, when the map has one (`None`: unchanged).
    pub fn canonical_sender(&self, address: &str) -> Option<String> {
        self.sender.find(address, &self.delimiter).map(|v| resolve(v, address))
    }

    /// A recipient's canonical form, when the map has one.
    pub fn canonical_recipient(&self, address: &str) -> Option<String> {
        self.recipient.find(address, &self.delimiter).map(|v| resolve(v, address))
    }

    /// Whether the header fields are rewritten too.
    pub fn rewrites_headers(&self) -> bool {
        self.headers
    }

    /// The header section with the canonical maps applied (`None`: nothing changed).
    pub fn rewrite_headers(&self, data: &[u8]) -> Option<Vec<u8>> {
        headers::rewrite(data, &|a| self.canonical_sender(a), &|a| self.canonical_recipient(a))
    }

    /// Where mail for `address` goes: the aliases expanded (recursively; an alias that names
    /// itself keeps a copy there), or the address itself. Duplicates are dropped.
    pub fn expand(&self, address: &str) -> Result<Vec<String>, MapError> {
        let mut out = vec![];
        self.expand_into(address, &mut vec![], &mut out)?;
        let mut seen = std::collections::HashSet::new();
        out.retain(|a| seen.insert(a.to_lowercase()));
        Ok(out)
    }

    fn expand_into(&self, address: &str, path: &mut Vec<String>, out: &mut Vec<String>) -> Result<(), MapError> {
        let Some(targets) = self.aliases.find(address, &self.delimiter) else {
            out.push(address.to_string());
            return Ok(());
        };
        let norm = normalize(address).unwrap_or_else(|| address.to_lowercase());
        if path.contains(&norm) || path.len() >= MAX_DEPTH {
            let mut cycle = path.clone();
            cycle.push(norm);
            return Err(MapError::Loop(cycle));
        }
        path.push(norm.clone());
        for t in targets {
            let t = resolve(t, address);
            if normalize(&t).as_ref() == Some(&norm) {
                out.push(t); // "a@x → a@x, b@x": a copy stays with a@x
            } else {
                self.expand_into(&t, path, out)?;
            }
            if out.len() > MAX_EXPANSION {
                return Err(MapError::TooWide(path[0].clone()));
            }
        }
        path.pop();
        Ok(())
    }

    /// Expands every key: a cycle through an address key shows from that key, and one made
    /// only of domain keys from a probe address at the domain.
    fn check_loops(&self) -> Result<(), MapError> {
        // In key order, so that the same maps always name the same cycle.
        let mut keys: Vec<&str> = self.aliases.keys().collect();
        keys.sort_unstable();
        for k in keys {
            let probe = match k.strip_prefix('@') {
                Some(d) => format!("mailgate-loop-probe@{d}"),
                None => k.to_string(),
            };
            self.expand(&probe)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps(aliases: &[(&str, &[&str])], delimiter: &str) -> Result<Maps, MapError> {
        let mut c = Config::default();
        c.relay.recipient_delimiter = delimiter.into();
        for (k, v) in aliases {
            c.aliases.map.insert(k.to_string(), v.iter().map(|s| s.to_string()).collect());
        }
        Maps::load(&c)
    }

    #[test]
    fn expands_aliases_domains_and_catch_alls() {
        let m = maps(
            &[
                ("sales@corp.test", &["ann@corp.test", "team@corp.test"]),
                ("team@corp.test", &["bob@corp.test", "ann@corp.test"]),
                ("keep@corp.test", &["keep@corp.test", "archive@corp.test"]),
                ("@old.test", &["@corp.test"]),
                ("@catch.test", &["postbox@corp.test"]),
                ("user@corp.test", &["user@store.test"]),
            ],
            "+",
        )
        .unwrap();
        assert_eq!(m.expand("Sales@corp.test").unwrap(), ["ann@corp.test", "bob@corp.test"]);
        assert_eq!(m.expand("keep@corp.test").unwrap(), ["keep@corp.test", "archive@corp.test"]);
        assert_eq!(m.expand("Carl@old.test").unwrap(), ["Carl@corp.test"]);
        assert_eq!(m.expand("sales@old.test").unwrap(), ["ann@corp.test", "bob@corp.test"], "then the new domain's");
        assert_eq!(m.expand("anything@catch.test").unwrap(), ["postbox@corp.test"]);
        assert_eq!(m.expand("user+tag@corp.test").unwrap(), ["user@store.test"]);
        assert_eq!(m.expand("other@corp.test").unwrap(), ["other@corp.test"]);
        assert!(m.is_alias("ANYONE@catch.test") && !m.is_alias("other@corp.test"));
    }

    #[test]
    fn loops_are_refused_when_loaded() {
        let two = maps(&[("a@x.test", &["b@x.test"]), ("b@x.test", &["c@x.test", "a@x.test"])], "");
        assert!(matches!(two, Err(MapError::Loop(ref p)) if p.len() == 3), "{:?}", two.err());
        let domains = maps(&[("@a.test", &["@b.test"]), ("@b.test", &["@a.test"])], "");
        assert!(matches!(domains, Err(MapError::Loop(_))));
        let mixed = maps(&[("x@b.test", &["x@a.test"]), ("@a.test", &["@b.test"])], "");
        assert!(matches!(mixed, Err(MapError::Loop(_))));
        let wide: Vec<String> = (0..1100).map(|i| format!("u{i}@x.test")).collect();
        let wide: Vec<&str> = wide.iter().map(String::as_str).collect();
        assert!(matches!(maps(&[("all@x.test", &wide)], ""), Err(MapError::TooWide(_))));
        assert!(maps(&[("a@x.test", &["not an address"])], "").is_err());
    }

    #[test]
    fn canonical_maps_and_tables() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("senders");
        std::fs::write(&t, "# who we are\nroot@gw.test\tops@corp.test\n@internal.test\t@corp.test\n").unwrap();
        let mut c = Config::default();
        c.canonical.sender_table = Some(t.clone());
        c.canonical.recipient.insert("old@corp.test".into(), "new@corp.test".into());
        let m = Maps::load(&c).unwrap();
        assert_eq!(m.canonical_sender("ROOT@gw.test").as_deref(), Some("ops@corp.test"));
        assert_eq!(m.canonical_sender("Ann@internal.test").as_deref(), Some("Ann@corp.test"));
        assert_eq!(m.canonical_sender("ann@corp.test"), None);
        assert_eq!(m.canonical_recipient("old@corp.test").as_deref(), Some("new@corp.test"));
        std::fs::write(&t, "root@gw.test ops@corp.test\n").unwrap();
        assert!(matches!(Maps::load(&c), Err(MapError::Line(_, 1, _))));
    }
}
