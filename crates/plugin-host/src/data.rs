//! Host-side state behind two imports: read-only data tables (loaded once per generation and
//! shared by every instance) and the scoreboard of one session's spam score.

use std::collections::HashMap;
use std::path::Path;

/// Most keys answered in one `lookup` call.
pub const MAX_KEYS: usize = 10_000;
/// Most rules one transaction's scoreboard keeps (a chatty plugin cannot grow it unbounded).
const MAX_RULES: usize = 256;

/// A `key<TAB>value` file in memory. Lines starting with `#` and empty lines are skipped.
pub struct DataTable {
    map: HashMap<String, String>,
}

impl DataTable {
    pub(crate) fn load(path: &Path) -> Result<DataTable, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut map = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) =
                line.split_once('\t').ok_or_else(|| format!("{}:{}: expected key<TAB>value", path.display(), n + 1))?;
            map.insert(k.to_string(), v.to_string());
        }
        Ok(DataTable { map })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }
}

/// One rule's contribution to the score.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRule {
    pub rule: String,
    pub points: f64,
}

/// The spam score of a session: rules added at connect/HELO/AUTH stay for the session; rules
/// added in a transaction are dropped when it ends.
#[derive(Debug, Default)]
pub struct Scoreboard {
    session: Vec<ScoreRule>,
    transaction: Vec<ScoreRule>,
    /// True while a transaction runs (from MAIL FROM until it ends); decides where `add` goes.
    in_transaction: bool,
}

impl Scoreboard {
    pub fn add(&mut self, rule: String, points: f64) {
        let list = if self.in_transaction { &mut self.transaction } else { &mut self.session };
        if list.len() < MAX_RULES {
            list.push(ScoreRule { rule, points });
        }
    }

    pub fn total(&self) -> f64 {
        self.session.iter().chain(&self.transaction).map(|r| r.points).sum()
    }

    pub fn rules(&self) -> Vec<(String, f64)> {
        self.session.iter().chain(&self.transaction).map(|r| (r.rule.clone(), r.points)).collect()
    }

    /// A transaction starts (MAIL FROM): later points belong to it.
    pub fn begin_transaction(&mut self) {
        self.transaction.clear();
        self.in_transaction = true;
    }

    /// Forgets everything (the queue's chain: every delivery starts from nothing).
    pub fn clear(&mut self) {
        *self = Scoreboard::default();
    }

    /// The transaction ended (accepted, refused or reset): its points are forgotten.
    pub fn end_transaction(&mut self) {
        self.transaction.clear();
        self.in_transaction = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_points_outlive_transactions() {
        let mut s = Scoreboard::default();
        s.add("DNSBL".into(), 2.0);
        s.begin_transaction();
        s.add("BAYES".into(), 3.5);
        assert_eq!(s.total(), 5.5);
        assert_eq!(s.rules(), vec![("DNSBL".to_string(), 2.0), ("BAYES".to_string(), 3.5)]);
        s.end_transaction();
        assert_eq!(s.total(), 2.0);
        s.begin_transaction();
        assert_eq!(s.total(), 2.0);
    }
}
