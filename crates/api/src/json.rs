//! A JSON value as a request is read into: strings borrowed from the body where they have no
//! escapes, objects as their members in document order. `serde_json::Value` copies every
//! string and builds a `BTreeMap` for every object; a request is read once and dropped, so
//! neither is needed. Nesting is bounded by serde_json's reader (128 levels: deeper is a
//! syntax error), so neither reading nor dropping recurses without end.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

#[derive(Debug, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool,
    /// No request field takes a number: only that one was there matters.
    Number,
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// Members in document order; a name given twice is there twice ([`Json::get`] and
    /// [`Json::members`] take the last, as `serde_json::Value` does).
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    pub(crate) fn parse(body: &'a [u8]) -> serde_json::Result<Json<'a>> {
        serde_json::from_slice(body)
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

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
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
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Json::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Text(k)) = map.next_key()? {
            out.push((k, map.next_value()?));
        }
        Ok(Json::Object(out))
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_like_serde_json_and_borrows_plain_strings() {
        let body = br#"{"a": "plain", "b": "esc\"aped", "c": [1, -2, 3.5, true, null, {}], "a": "again"}"#;
        let v = Json::parse(body).unwrap();
        assert!(matches!(v.get("a"), Some(Json::Str(Cow::Borrowed("again")))));
        assert!(matches!(v.get("b"), Some(Json::Str(Cow::Owned(s))) if s == "esc\"aped"));
        let Some(Json::Array(c)) = v.get("c") else { panic!("{v:?}") };
        assert_eq!(c, &[Json::Number, Json::Number, Json::Number, Json::Bool, Json::Null, Json::Object(vec![])]);
        let Json::Object(m) = &v else { panic!() };
        let names: Vec<&str> = Json::members(m).map(|(k, _)| k).collect();
        assert_eq!(names, ["b", "c", "a"]);
        for bad in [&b"{"[..], b"[1,]", b"{\"a\" 1}", b"\"\\ud800\"", b"nul", b"{} x", b"\xff"] {
            assert!(Json::parse(bad).is_err(), "{bad:?}");
        }
    }
}
