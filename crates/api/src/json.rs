//! A JSON value as a request is read into: strings borrowed from the body where they have no
//! escapes, objects as their members in document order. `serde_json::Value` copies every
//! string and builds a `BTreeMap` for every object; a request is read once and dropped, so
//! neither is needed. Nesting is bounded by serde_json's reader (128 levels: deeper is a
//! syntax error), so neither reading nor dropping recurses without end; and the number of
//! values is bounded, so a body of many small values (`[0,0,0,…]`: two octets each, 32 here)
//! cannot take many times its size in memory.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// The top-level members read as [`Json::Written`] when they are strings.
pub(crate) const WRITTEN: [&str; 2] = ["text", "html"];

/// Why a body is not read.
#[derive(Debug)]
pub(crate) enum ParseError {
    Syntax(serde_json::Error),
    /// More values than the caller allowed.
    TooManyValues(usize),
}

#[derive(Debug, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool,
    /// No request field takes a number: only that one was there matters.
    Number,
    Str(Cow<'a, str>),
    /// A string as the body wrote it, between its quotes, escapes not undone: the top-level
    /// `text` and `html` ([`WRITTEN`]), which [`crate::text::body_text`] decodes in the pass
    /// that also makes their line ends CRLF.
    Written(&'a str),
    Array(Vec<Json<'a>>),
    /// Members in document order; a name given twice is there twice ([`Json::get`] and
    /// [`Json::members`] take the last, as `serde_json::Value` does; a request is refused
    /// before, see [`Json::first_duplicate`]).
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Reads `body`, which may hold at most `max_values` values (every string, number, array,
    /// object… counts one; object member names do not).
    pub(crate) fn parse(body: &'a [u8], max_values: usize) -> Result<Json<'a>, ParseError> {
        Json::parse_as(body, max_values, Role::Message)
    }

    /// Reads a batch: `body` is an array of requests, each read as [`Json::parse`] reads one
    /// (their `text` and `html` as written); `max_values` bounds the whole body.
    pub(crate) fn parse_batch(body: &'a [u8], max_values: usize) -> Result<Json<'a>, ParseError> {
        Json::parse_as(body, max_values, Role::Batch)
    }

    fn parse_as(body: &'a [u8], max_values: usize, role: Role) -> Result<Json<'a>, ParseError> {
        let budget = Budget { left: Cell::new(max_values), over: Cell::new(false) };
        let mut de = serde_json::Deserializer::from_slice(body);
        let read = Seed(&budget, role).deserialize(&mut de).and_then(|v| de.end().map(|()| v));
        // The budget, not the error's text, tells a cap from a syntax error.
        read.map_err(|e| if budget.over.get() { ParseError::TooManyValues(max_values) } else { ParseError::Syntax(e) })
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    /// An object's member `name` (the last one of that name); `None` for other values.
    pub(crate) fn get(&self, name: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(m) => m.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The JSON pointer of the first member whose object already has a member of its name,
    /// at any depth. RFC 8259 §4: names should be unique, and readers disagree about which of
    /// two counts (the first, the last, both) — a proxy or log in front of the gateway could
    /// read another `from` or `to` than the gateway does. Objects of at most 16 members are
    /// compared pairwise, larger ones through a set.
    pub(crate) fn first_duplicate(&self) -> Option<String> {
        match self {
            Json::Object(m) => {
                let twice = if m.len() <= 16 {
                    m.iter().enumerate().find(|(i, (k, _))| m[..*i].iter().any(|(e, _)| e == k)).map(|(_, (k, _))| k)
                } else {
                    let mut seen = std::collections::HashSet::with_capacity(m.len());
                    m.iter().map(|(k, _)| k).find(|k| !seen.insert(&***k))
                };
                if let Some(k) = twice {
                    return Some(format!("/{}", crate::request::escape(k)));
                }
                m.iter().find_map(|(k, v)| v.first_duplicate().map(|p| format!("/{}{p}", crate::request::escape(k))))
            }
            Json::Array(a) => a.iter().enumerate().find_map(|(i, v)| v.first_duplicate().map(|p| format!("/{i}{p}"))),
            _ => None,
        }
    }

    /// An object's members, each name once with its last value, in the order of their last
    /// appearance. Quadratic in the number of members: for objects a limit bounds first.
    pub(crate) fn members<'m>(m: &'m [(Cow<'a, str>, Json<'a>)]) -> impl Iterator<Item = (&'m str, &'m Json<'a>)> {
        m.iter()
            .enumerate()
            .filter(move |(i, (k, _))| !m[i + 1..].iter().any(|(later, _)| later == k))
            .map(|(_, (k, v))| (&**k, v))
    }
}

/// A string, borrowed from the input when it has no escapes.
struct Text<'a>(Cow<'a, str>);

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Owned(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Text(Cow::Owned(v)))
    }
}

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor)
    }
}

/// Values a body may still hold, and whether one more was refused.
struct Budget {
    left: Cell<usize>,
    over: Cell<bool>,
}

/// What a value is to the request: a request (whose [`WRITTEN`] members are kept as
/// written), a batch of requests, or something within one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Message,
    Batch,
    Inner,
}

/// Reads one value, counting it against the budget.
#[derive(Clone, Copy)]
struct Seed<'c>(&'c Budget, Role);

impl Seed<'_> {
    /// Counts one value.
    fn count<E: de::Error>(self) -> Result<(), E> {
        match self.0.left.get() {
            0 => {
                self.0.over.set(true);
                Err(E::custom("too many values"))
            }
            n => {
                self.0.left.set(n - 1);
                Ok(())
            }
        }
    }

    /// A value serde_json has checked and handed over as written: a string stays so, anything
    /// else is read.
    fn written<'de, E: de::Error>(self, raw: &'de RawValue) -> Result<Json<'de>, E> {
        let raw = raw.get();
        match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            Some(inside) => self.count().map(|()| Json::Written(inside)),
            None => self.deserialize(&mut serde_json::Deserializer::from_str(raw)).map_err(E::custom),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Json<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        self.count()?;
        d.deserialize_any(JsonVisitor(self))
    }
}

struct JsonVisitor<'c>(Seed<'c>);

impl<'de> Visitor<'de> for JsonVisitor<'_> {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Json::Number)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Json::Number)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Json::Number)
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        // A batch's elements are requests.
        let role = if self.0 .1 == Role::Batch { Role::Message } else { Role::Inner };
        while let Some(v) = seq.next_element_seed(Seed(self.0 .0, role))? {
            out.push(v);
        }
        Ok(Json::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        let inner = Seed(self.0 .0, Role::Inner);
        while let Some(Text(k)) = map.next_key()? {
            let v = match self.0 .1 == Role::Message && WRITTEN.contains(&&*k) {
                true => inner.written(map.next_value::<&RawValue>()?)?,
                false => map.next_value_seed(inner)?,
            };
            out.push((k, v));
        }
        Ok(Json::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_like_serde_json_and_borrows_plain_strings() {
        let body = br#"{"a": "plain", "b": "esc\"aped", "c": [1, -2, 3.5, true, null, {}], "a": "again"}"#;
        let v = Json::parse(body, 100).unwrap();
        assert!(matches!(v.get("a"), Some(Json::Str(Cow::Borrowed("again")))));
        assert!(matches!(v.get("b"), Some(Json::Str(Cow::Owned(s))) if s == "esc\"aped"));
        let Some(Json::Array(c)) = v.get("c") else { panic!("{v:?}") };
        assert_eq!(c, &[Json::Number, Json::Number, Json::Number, Json::Bool, Json::Null, Json::Object(vec![])]);
        let Json::Object(m) = &v else { panic!() };
        let names: Vec<&str> = Json::members(m).map(|(k, _)| k).collect();
        assert_eq!(names, ["b", "c", "a"]);
        for bad in [&b"{"[..], b"[1,]", b"{\"a\" 1}", b"\"\\ud800\"", b"nul", b"{} x", b"\xff"] {
            assert!(matches!(Json::parse(bad, 100), Err(ParseError::Syntax(_))), "{bad:?}");
        }
    }

    /// A name given twice in one object is found at any depth, named by its pointer, also
    /// when written differently (`\u0061` is `a`) and in objects past the pairwise size.
    #[test]
    fn a_member_given_twice_is_found_with_its_pointer() {
        let big: Vec<String> = (0..40).map(|i| format!("\"k{i}\": {i}")).collect();
        for (body, want) in [
            (r#"{"a": 1, "b": 2}"#.to_string(), None),
            (r#"{"a": 1, "b": 2, "a": 3}"#.to_string(), Some("/a")),
            (r#"{"a": 1, "\u0061": 3}"#.to_string(), Some("/a")),
            (r#"{"to": [{"email": "x@y", "name": "n", "email": "z@y"}]}"#.to_string(), Some("/to/0/email")),
            (r#"{"m": {"a/b": {"c~": 1, "c~": 2}}, "n": {"c~": 1}}"#.to_string(), Some("/m/a~1b/c~0")),
            (r#"[{"a": 1}, {"a": 1, "b": 1}, [{"x": 0, "x": 0}]]"#.to_string(), Some("/2/0/x")),
            (format!("{{{}}}", big.join(",")), None),
            (format!("{{{}, \"k39\": 0}}", big.join(",")), Some("/k39")),
        ] {
            let v = Json::parse(body.as_bytes(), 1000).unwrap();
            assert_eq!(v.first_duplicate().as_deref(), want, "{body:.60}");
        }
    }

    /// Values are counted wherever they are: exactly `max` is read, one more is refused as too
    /// many (not as a syntax error), and a syntax error before the cap stays one.
    #[test]
    fn the_number_of_values_is_capped() {
        for (body, values) in [
            ("[1, 2, 3]".to_string(), 4),
            (r#"{"a": {"b": ["x", null, true]}}"#.to_string(), 6),
            (format!("[{}0]", "0,".repeat(9_999)), 10_001),
        ] {
            assert!(Json::parse(body.as_bytes(), values).is_ok(), "{body:.40}");
            let e = Json::parse(body.as_bytes(), values - 1).expect_err(&body);
            assert!(matches!(e, ParseError::TooManyValues(n) if n == values - 1), "{body:.40}: {e:?}");
        }
        assert!(matches!(Json::parse(b"[1, 2,", 100), Err(ParseError::Syntax(_))));
        assert!(matches!(Json::parse(b"[1, 2,", 3), Err(ParseError::Syntax(_))), "the cap reached, not passed");
    }

    /// The top-level `text` and `html` are kept as written when they are strings; anything
    /// else there, and the same names deeper, is read as any value is, within the same cap.
    #[test]
    fn text_and_html_are_kept_as_written() {
        let body = br#"{"text": "a\nb\u00e9", "html": "<p>", "m": {"text": "x\ny"}}"#;
        let v = Json::parse(body, 100).unwrap();
        assert_eq!(v.get("text"), Some(&Json::Written(r"a\nb\u00e9")));
        assert_eq!(v.get("html"), Some(&Json::Written("<p>")));
        assert_eq!(v.get("m").and_then(|m| m.get("text")), Some(&Json::Str(Cow::Owned("x\ny".into()))));
        let v = Json::parse(br#"{"text": null, "html": [1, {"a": "b"}]}"#, 100).unwrap();
        assert_eq!(v.get("text"), Some(&Json::Null));
        assert_eq!(
            v.get("html"),
            Some(&Json::Array(vec![Json::Number, Json::Object(vec![("a".into(), Json::Str("b".into()))])]))
        );
        // 1 object, text, html's array and its two values, the inner object's string: 6.
        let body = br#"{"text": "t", "html": [1, {"a": "b"}]}"#;
        assert!(Json::parse(body, 6).is_ok());
        assert!(matches!(Json::parse(body, 5), Err(ParseError::TooManyValues(5))));
        assert!(matches!(Json::parse(br#"{"text": "t"#, 100), Err(ParseError::Syntax(_))));
        assert!(matches!(Json::parse(b"{\"text\": \"a\x01\"}", 100), Err(ParseError::Syntax(_))), "a raw control");
        assert!(matches!(Json::parse(br#"{"text": "\q"}"#, 100), Err(ParseError::Syntax(_))), "no such escape");
    }
}
