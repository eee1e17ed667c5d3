//! The message as plugins see it through the `message` resource: parsed once, lazily, and
//! shared by every plugin of a chain.

use std::sync::{Arc, OnceLock};

use mail_parser::{Message, MessageParser};

use crate::structure::dismantle;

/// A message as plugins see it: the raw bytes, parsed once on first use with mail-parser and
/// shared by every plugin of the chain. Only messages that passed [`inspect`] should be
/// handed to plugins: then the parse here recurses at most `max_depth` levels.
pub struct ParsedMessage {
    raw: Arc<Vec<u8>>,
    parsed: OnceLock<Option<Message<'static>>>,
}

impl Drop for ParsedMessage {
    fn drop(&mut self) {
        if let Some(Some(m)) = self.parsed.take() {
            dismantle(m);
        }
    }
}

impl ParsedMessage {
    pub fn new(raw: Arc<Vec<u8>>) -> Arc<ParsedMessage> {
        Arc::new(ParsedMessage { raw, parsed: OnceLock::new() })
    }

    fn get(&self) -> Option<&Message<'static>> {
        self.parsed.get_or_init(|| MessageParser::default().parse(self.raw.as_slice()).map(|m| m.into_owned())).as_ref()
    }

    /// The message as received.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The decoded Subject.
    pub fn subject(&self) -> Option<&str> {
        self.get().and_then(|p| p.subject())
    }

    /// The first From address, without display name or brackets.
    pub fn from_address(&self) -> Option<String> {
        self.get()
            .and_then(|p| p.from())
            .and_then(|a| a.first())
            .and_then(|a| a.address.as_ref())
            .map(|a| a.to_string())
    }

    /// The first text/plain part (or the HTML part converted to text).
    pub fn text_body(&self) -> Option<String> {
        self.get().and_then(|p| p.body_text(0)).map(|c| c.into_owned())
    }

    /// The first text/html part.
    pub fn html_body(&self) -> Option<String> {
        self.get().and_then(|p| p.body_html(0)).map(|c| c.into_owned())
    }

    /// The value of the first field `name`, unfolded (as the `header` import gives it).
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_values(Some(name)).into_iter().next().map(|(_, v)| v)
    }

    /// Raw value text of every header, unfolded.
    pub fn header_values(&self, name: Option<&str>) -> Vec<(String, String)> {
        let Some(m) = self.get() else { return vec![] };
        m.headers()
            .iter()
            .filter(|h| name.is_none_or(|n| h.name.as_str().eq_ignore_ascii_case(n)))
            .map(|h| {
                let v = self.raw.get(h.offset_start as usize..h.offset_end as usize).unwrap_or_default();
                (h.name.as_str().to_string(), unfold(v))
            })
            .collect()
    }
}

fn unfold(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(v);
    s.replace("\r\n", "").replace('\n', "").trim().to_string()
}
