//! This plugin's own settings table from the gateway config (read-only, always allowed).
//!
//! Scalars come back as text without quotes (`"42"`, `"true"`, `"example.com"`), arrays
//! element by element through [`get_list`], tables as JSON text through [`get`].
//!
//! ```ignore
//! fn init(&mut self) -> Result<(), String> {
//!     self.domains = config::get_list("domains");
//!     self.code = config::parse("code")?.unwrap_or(550);
//!     Ok(())
//! }
//! ```

use std::{fmt::Display, str::FromStr};

pub use crate::bindings::mailgate::plugin::config::{get, get_list, keys};

/// The value of `key`, or `default` when the key is absent.
pub fn get_or(key: &str, default: &str) -> String {
    get(key).unwrap_or_else(|| default.to_string())
}

/// The value of `key` parsed with [`FromStr`] (e.g. `u16`, `bool`); `Ok(None)` when absent,
/// and an error naming the key when the value does not parse.
pub fn parse<T>(key: &str) -> Result<Option<T>, String>
where
    T: FromStr,
    T::Err: Display,
{
    get(key)
        .map(|text| text.parse().map_err(|e| format!("config key `{key}` = {text:?}: {e}")))
        .transpose()
}
