//! `[aliases]` and `[canonical]`: the address maps. Keys and values are addresses
//! (`user@domain`) or whole domains (`@domain`); see `mailgate-rewrite` for what they mean.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Virtual aliases: an address (or every address of a domain) delivered to other addresses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Aliases {
    /// A `key<TAB>address, address…` file, read with the config (and again on reload).
    pub table: Option<PathBuf>,
    /// `"sales@corp.example" = ["ann@corp.example", "bob@corp.example"]`, `"@old.example" =
    /// ["@corp.example"]` (same local part, new domain), `"@corp.example" =
    /// ["catchall@corp.example"]` (every address without an entry of its own).
    pub map: BTreeMap<String, Vec<String>>,
}

/// Canonical rewriting: one address (or domain) written as another, in the envelope and,
/// with `headers`, in the header fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Canonical {
    /// The sender's map: the reverse path, and From/Sender/Reply-To with `headers`.
    pub sender: BTreeMap<String, String>,
    pub sender_table: Option<PathBuf>,
    /// The recipients' map: every recipient, and To/Cc with `headers`.
    pub recipient: BTreeMap<String, String>,
    pub recipient_table: Option<PathBuf>,
    /// Rewrite the header fields too (an originator's DKIM signature over them then breaks).
    pub headers: bool,
}
