//! The message as plugins see it through the `message` resource: parsed once, lazily, and
//! shared by every plugin of a chain.

use std::sync::{Arc, OnceLock};

use mail_parser::{HeaderName, Message, MessageParser, PartType};

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
        self.parsed.get_or_init(|| parser().parse(self.raw.as_slice()).map(|m| m.into_owned())).as_ref()
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

    /// The first text/plain body part; when the body has no text/plain part, the first HTML
    /// part converted to text. (mail-parser's `body_text(0)` is the first body part of either
    /// kind, so an HTML part ahead of a text part in multipart/mixed would be converted.)
    pub fn text_body(&self) -> Option<String> {
        let m = self.get()?;
        let part = |id: &u32| m.part(*id).map(|p| &p.body);
        if let Some(text) = m.text_body.iter().find_map(|id| match part(id) {
            Some(PartType::Text(t)) => Some(t),
            _ => None,
        }) {
            return Some(text.to_string());
        }
        m.text_body.iter().find_map(|id| match part(id) {
            Some(PartType::Html(h)) => Some(mail_parser::decoders::html::html_to_text(h)),
            _ => None,
        })
    }

    /// The first text/html body part; none when the message has no HTML. (mail-parser's
    /// `body_html(0)` converts a text/plain body into HTML, which would tell every plugin
    /// that a plain-text message has an HTML body.)
    pub fn html_body(&self) -> Option<String> {
        let m = self.get()?;
        m.html_body.iter().find_map(|id| match m.part(*id).map(|p| &p.body) {
            Some(PartType::Html(h)) => Some(h.to_string()),
            _ => None,
        })
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

/// Parses only the fields what plugins ask of a message needs: the MIME fields (the body
/// parts), Subject and From. The others are skipped, kept only as names and offsets (all that
/// [`ParsedMessage::header_values`] reads): parsing every field — Received, DKIM-Signature,
/// Date, Message-ID — and copying the results cost mailgate-real more than half of the parse.
fn parser() -> &'static MessageParser {
    static PARSER: std::sync::LazyLock<MessageParser> = std::sync::LazyLock::new(|| {
        MessageParser::new()
            .with_mime_headers()
            .header_text(HeaderName::Subject)
            .header_address(HeaderName::From)
            .default_header_ignore()
    });
    &PARSER
}

fn unfold(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(v);
    s.replace("\r\n", "").replace('\n', "").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> Arc<ParsedMessage> {
        ParsedMessage::new(Arc::new(raw.replace('\n', "\r\n").into_bytes()))
    }

    const HEAD: &str = "From: a@example.com\nTo: b@example.org\nSubject: s\nMIME-Version: 1.0\n";

    #[test]
    fn subject_and_from_are_decoded_and_every_field_is_there_raw() {
        let m = parsed(concat!(
            "Received: from a.example (a.example [192.0.2.1])\n\tby mx.example; Tue, 1 Dec 2026 08:00:00 +0000\n",
            "DKIM-Signature: v=1; a=rsa-sha256; d=example.com;\n s=sel; b=abc\n",
            "From: =?utf-8?q?Ren=C3=A9?= <rene@example.com>\n",
            "Subject: =?utf-8?q?caf=C3=A9?= menu\n",
            "Date: Tue, 1 Dec 2026 08:00:00 +0000\n",
            "Message-ID: <1@example.com>\n",
            "\nbody\n",
        ));
        assert_eq!(m.subject(), Some("café menu"));
        assert_eq!(m.from_address().as_deref(), Some("rene@example.com"));
        assert_eq!(
            m.header("received").as_deref(),
            Some("from a.example (a.example [192.0.2.1])\tby mx.example; Tue, 1 Dec 2026 08:00:00 +0000")
        );
        assert_eq!(m.header("DKIM-Signature").as_deref(), Some("v=1; a=rsa-sha256; d=example.com; s=sel; b=abc"));
        assert_eq!(m.header("message-id").as_deref(), Some("<1@example.com>"));
        let names: Vec<String> = m.header_values(None).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["Received", "DKIM-Signature", "From", "Subject", "Date", "Message-ID"]);
        assert_eq!(m.text_body().as_deref(), Some("body\r\n"));
    }

    #[test]
    fn plain_text_has_no_html_body() {
        for ct in ["", "Content-Type: text/plain; charset=utf-8\n"] {
            let m = parsed(&format!("{HEAD}{ct}\nhello <b>world</b>\n"));
            assert_eq!(m.text_body().as_deref(), Some("hello <b>world</b>\r\n"), "{ct:?}");
            assert_eq!(m.html_body(), None, "{ct:?}");
        }
    }

    #[test]
    fn html_only_gives_its_html_and_text_converted_from_it() {
        let m = parsed(&format!("{HEAD}Content-Type: text/html\n\n<p>hello <b>world</b></p>\n"));
        assert_eq!(m.html_body().as_deref(), Some("<p>hello <b>world</b></p>\r\n"));
        let text = m.text_body().expect("text converted from the HTML");
        assert!(text.contains("hello world"), "{text:?}");
        assert!(!text.contains('<'), "{text:?}");
    }

    #[test]
    fn each_kind_comes_from_its_own_part_whatever_the_order() {
        for (kind, first, second) in [
            ("alternative", "text/plain", "text/html"),
            ("alternative", "text/html", "text/plain"),
            ("mixed", "text/html", "text/plain"),
            ("mixed", "text/plain", "text/html"),
        ] {
            let body = |ct: &str| if ct == "text/html" { "<i>the html</i>" } else { "the text" };
            let m = parsed(&format!(
                "{HEAD}Content-Type: multipart/{kind}; boundary=b\n\n--b\nContent-Type: {first}\n\n{}\n--b\nContent-Type: {second}\n\n{}\n--b--\n",
                body(first),
                body(second)
            ));
            assert_eq!(m.text_body().as_deref(), Some("the text"), "{kind} {first} {second}");
            assert_eq!(m.html_body().as_deref(), Some("<i>the html</i>"), "{kind} {first} {second}");
        }
    }

    #[test]
    fn an_attachment_is_no_body() {
        let m = parsed(&format!(
            "{HEAD}Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: application/pdf\nContent-Disposition: attachment; filename=a.pdf\nContent-Transfer-Encoding: base64\n\nJVBERi0=\n--b--\n"
        ));
        assert_eq!(m.html_body(), None);
        assert_eq!(m.text_body(), None);
    }
}
