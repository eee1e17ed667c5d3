//! One address map: keys are addresses or `@domain`, looked up as Postfix does — the address,
//! then the address without its extension (`user+tag@d` → `user@d`), then `@domain`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mailgate_config::canonical_domain;

use crate::MapError;

pub struct AddrMap<V> {
    entries: HashMap<String, V>,
}

impl<V> Default for AddrMap<V> {
    fn default() -> Self {
        AddrMap { entries: HashMap::new() }
    }
}

impl<V> AddrMap<V> {
    pub fn insert(&mut self, key: &str, value: V) -> Result<(), MapError> {
        let k = key_form(key).ok_or_else(|| MapError::Key(key.to_string()))?;
        self.entries.insert(k, value);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The entry for `address`: its own, its extension-less form's, or its domain's.
    pub fn find(&self, address: &str, delimiter: &str) -> Option<&V> {
        let norm = normalize(address)?;
        if let Some(v) = self.entries.get(&norm) {
            return Some(v);
        }
        let (local, domain) = norm.rsplit_once('@')?;
        if !delimiter.is_empty() {
            if let Some((base, _)) = local.split_once(delimiter).filter(|(b, _)| !b.is_empty()) {
                if let Some(v) = self.entries.get(&format!("{base}@{domain}")) {
                    return Some(v);
                }
            }
        }
        self.entries.get(&format!("@{domain}"))
    }
}

/// An address in the form keys are compared in: local part in lower case, domain as its
/// A-label. `None` for something that is not `local@domain`.
pub fn normalize(address: &str) -> Option<String> {
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    Some(format!("{}@{}", local.to_lowercase(), canonical_domain(domain)))
}

/// A key: an address, or `@domain`.
fn key_form(key: &str) -> Option<String> {
    let key = key.trim();
    if key.contains(char::is_whitespace) || key.contains(['<', '>', ',']) {
        return None;
    }
    match key.strip_prefix('@') {
        Some(d) if !d.is_empty() && !d.contains('@') => Some(format!("@{}", canonical_domain(d))),
        Some(_) => None,
        None => normalize(key),
    }
}

/// A value: an address, or `@domain` (the same local part at that domain).
pub fn check_value(v: &str) -> Result<String, MapError> {
    key_form(v).map(|_| v.trim().to_string()).ok_or_else(|| MapError::Value(v.to_string()))
}

/// What a value means for `address`: itself, or `@domain` with the address's local part.
pub fn resolve(value: &str, address: &str) -> String {
    match value.strip_prefix('@') {
        Some(domain) => {
            let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
            format!("{local}@{domain}")
        }
        None => value.to_string(),
    }
}

/// The lines of a `key<TAB>value` table (the plugins' data-table format), with their numbers.
pub fn read_table(path: &Path) -> Result<Vec<(usize, String, String)>, MapError> {
    let text = std::fs::read_to_string(path).map_err(|e| MapError::Table(path.to_path_buf(), e))?;
    let mut out = vec![];
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('\t')
            .ok_or_else(|| MapError::Line(PathBuf::from(path), n + 1, "expected key<TAB>value".into()))?;
        out.push((n + 1, k.trim().to_string(), v.trim().to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_address_then_its_base_then_its_domain() {
        let mut m = AddrMap::default();
        m.insert("Sales@Corp.Test", 1).unwrap();
        m.insert("user@corp.test", 2).unwrap();
        m.insert("@corp.test", 3).unwrap();
        m.insert("@müller.test", 4).unwrap();
        assert_eq!(m.find("sales@corp.test", ""), Some(&1));
        assert_eq!(m.find("user+tag@CORP.test", "+"), Some(&2));
        assert_eq!(m.find("user+tag@corp.test", ""), Some(&3));
        assert_eq!(m.find("+tag@corp.test", "+"), Some(&3));
        assert_eq!(m.find("x@xn--mller-kva.test", ""), Some(&4));
        assert_eq!(m.find("x@other.test", ""), None);
        assert!(m.insert("not an address", 0).is_err());
        assert!(m.insert("@", 0).is_err());
        assert_eq!(resolve("@new.test", "Ann@old.test"), "Ann@new.test");
        assert_eq!(resolve("x@y.test", "Ann@old.test"), "x@y.test");
    }
}
