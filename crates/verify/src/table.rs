//! A recipient table: the addresses a domain has, from a `key<TAB>value` file (the plugins'
//! data-table format; a line may be just the key). `@domain` stands for every address there.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Why a table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}:{1}: {2:?} is not an address or @domain")]
    Line(PathBuf, usize, String),
}

pub struct Table {
    /// Lower-case addresses and `@domain` catch-alls.
    keys: HashSet<String>,
}

impl Table {
    pub fn load(path: &Path) -> Result<Table, TableError> {
        let text = std::fs::read_to_string(path).map_err(|e| TableError::Read(path.to_path_buf(), e))?;
        let mut keys = HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let key = line.split('\t').next().unwrap_or("").trim();
            let ok = match key.rsplit_once('@') {
                Some((local, domain)) => !domain.is_empty() && !local.contains(char::is_whitespace),
                None => false,
            };
            if !ok {
                return Err(TableError::Line(path.to_path_buf(), n + 1, key.to_string()));
            }
            keys.insert(lower_domain_and_local(key));
        }
        Ok(Table { keys })
    }

    /// Whether the table has `address` (compared without case), its form without the
    /// extension after `delimiter` (`user+tag@d` → `user@d`), or its domain's `@domain`.
    pub fn has(&self, address: &str, delimiter: &str) -> bool {
        let a = lower_domain_and_local(address);
        if self.keys.contains(&a) {
            return true;
        }
        let Some((local, domain)) = a.rsplit_once('@') else { return false };
        if !delimiter.is_empty() {
            if let Some((base, _)) = local.split_once(delimiter) {
                if self.keys.contains(&format!("{base}@{domain}")) {
                    return true;
                }
            }
        }
        self.keys.contains(&format!("@{domain}"))
    }
}

/// Addresses compare without case: local parts are case-sensitive by the letter of RFC 5321,
/// but no mail store in use treats them so, and a table that missed `Alice@` for `alice@`
/// would refuse real mail.
fn lower_domain_and_local(a: &str) -> String {
    a.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keys_and_matches_extensions_and_catch_alls() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "# users\nalice@corp.test\tok\r\nBob@Corp.test\n\n@all.test\tcatch-all\n").unwrap();
        let t = Table::load(&p).unwrap();
        assert!(t.has("alice@corp.test", ""));
        assert!(t.has("ALICE@corp.TEST", ""));
        assert!(t.has("bob@corp.test", ""));
        assert!(!t.has("carol@corp.test", ""));
        assert!(!t.has("alice+news@corp.test", ""));
        assert!(t.has("alice+news@corp.test", "+"));
        assert!(!t.has("alice-news@corp.test", "+"));
        assert!(t.has("anyone@all.test", ""));
        assert!(!t.has("anyone@sub.all.test", ""));
        std::fs::write(&p, "alice@corp.test\nnot an address\n").unwrap();
        assert!(matches!(Table::load(&p), Err(TableError::Line(_, 2, _))));
    }
}
