//! `POST /api/v1/messages` with a JSON body: validated field by field (every error names its
//! field as a JSON pointer), then built into a MIME message by mail-builder.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::error::ApiError;
use crate::json::{Json, ParseError};
use crate::text::BadText;
use base64::Engine;
use mail_builder::headers::address::Address as MbAddress;
use mail_builder::headers::text::Text;
use mail_builder::mime::{BodyPart, MimePart};
use mail_builder::MessageBuilder;
use mailgate_smtp::Address;

/// Fields a request may not set through `headers`: the API writes them from its own fields,
/// or they belong to the gateway (trace and authentication fields).
const RESERVED: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "sender",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "received",
    "return-path",
    "dkim-signature",
    "authentication-results",
    "arc-seal",
    "arc-message-signature",
    "arc-authentication-results",
];

/// The request's fields (a `match`: compared by length first, not against each in turn).
fn known(field: &str) -> bool {
    matches!(
        field,
        "from"
            | "to"
            | "cc"
            | "bcc"
            | "reply_to"
            | "subject"
            | "text"
            | "html"
            | "headers"
            | "attachments"
            | "tags"
            | "metadata"
            | "idempotency_key"
    )
}

/// Limits on the parts of a request that are not the message itself.
const MAX_TAGS: usize = 20;
const MAX_TAG_LEN: usize = 128;
const MAX_METADATA: usize = 8 << 10;
const MAX_HEADERS: usize = 100;
const MAX_ATTACHMENTS: usize = 100;

/// A mailbox with an optional display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub email: Address,
    pub name: Option<String>,
}

/// A request read and checked: the envelope, the built message and what is kept with it.
#[derive(Debug)]
pub struct Built {
    pub from: Address,
    /// To, Cc and Bcc, each address once (compared without case), in that order.
    pub rcpts: Vec<Address>,
    pub message: Vec<u8>,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
}

/// Refuses control characters (every octet that could end or break a header line: CR, LF,
/// NUL, and the rest of C0 and DEL; tab only where `tab` allows it).
pub(crate) fn plain_text(s: &str, ptr: &str, what: &str, tab: bool) -> Result<(), ApiError> {
    match if tab { first_control(s, [b'\t']) } else { first_control(s, []) } {
        Some(c) => {
            Err(ApiError::field(ptr, format!("{what} must not contain control characters (found U+{:04X})", c as u32)))
        }
        None => Ok(()),
    }
}

/// The first control character of `s` (Unicode's Cc: C0, DEL and C1) other than the ASCII
/// ones in `allowed`, found on bytes (every API body's text passes here): C0 and DEL are one
/// octet each; C1 (U+0080 to U+009F) is 0xC2 followed by 0x80 to 0x9F. `allowed` is an array
/// of known length so that the block test below (allowed octets included) is unrolled and
/// vectorised: a text's line ends do not stop it.
pub(crate) fn first_control<const N: usize>(s: &str, allowed: [u8; N]) -> Option<char> {
    let candidate = |x: u8| (x < 0x20 && allowed.iter().all(|&a| a != x)) || x == 0x7f || x == 0xc2;
    // Blocks without a candidate are skipped whole (a loop without an early exit, which the
    // compiler vectorises); a block with one is searched octet by octet.
    let next = |b: &[u8], mut at: usize| {
        while let Some(block) = b.get(at..at + 32) {
            if block.iter().fold(false, |any, &x| any | candidate(x)) {
                break;
            }
            at += 32;
        }
        b[at..].iter().position(|&x| candidate(x)).map(|i| at + i)
    };
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(at) = next(b, from) {
        if b[at] != 0xc2 {
            return Some(char::from(b[at]));
        }
        if let Some(&n @ 0x80..=0x9f) = b.get(at + 1) {
            return char::from_u32(u32::from(n));
        }
        from = at + 1;
    }
    None
}

/// `text` or `html`: decoded and checked (see [`crate::text::body_text`]).
fn body_text(v: &Json, ptr: &str) -> Result<(String, bool), ApiError> {
    let Json::Written(raw) = v else {
        return Err(ApiError::field(ptr, "must be a string"));
    };
    crate::text::body_text(raw).map_err(|e| match e {
        BadText::Control(c) => {
            ApiError::field(ptr, format!("must not contain control characters (found U+{:04X})", c as u32))
        }
        BadText::BadEscape => {
            ApiError::field(ptr, "holds half a surrogate pair (\\uD800 to \\uDFFF) without the other")
        }
    })
}

fn string<'a>(v: &'a Json, ptr: &str) -> Result<&'a str, ApiError> {
    v.as_str().ok_or_else(|| ApiError::field(ptr, "must be a string"))
}

/// Where a mailbox is in the request: a field, or an element of its array. Written out only
/// when an error names it (most requests have none).
#[derive(Clone, Copy)]
pub(crate) struct At<'a>(pub &'a str, pub Option<usize>);

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1 {
            None => f.write_str(self.0),
            Some(i) => write!(f, "{}/{i}", self.0),
        }
    }
}

/// `"a@b"`, `"Name <a@b>"` or `{"email": "a@b", "name": "Name"}`.
pub(crate) fn mailbox(v: &Json, at: At) -> Result<Mailbox, ApiError> {
    let (email, name, in_object) = match v {
        Json::Str(s) => match s.trim().strip_suffix('>').and_then(|s| s.rsplit_once('<')) {
            Some((name, email)) => (email.trim(), Some(name.trim().trim_matches('"').trim()), false),
            None => (s.trim(), None, false),
        },
        Json::Object(m) => {
            if let Some((k, _)) = m.iter().find(|(k, _)| k != "email" && k != "name") {
                return Err(ApiError::field(format!("{at}/{}", escape(k)), "unknown field"));
            }
            let email = v.get("email").ok_or_else(|| ApiError::field(format!("{at}/email"), "is required"))?;
            let name = match v.get("name") {
                None | Some(Json::Null) => None,
                Some(n) => Some(n.as_str().ok_or_else(|| ApiError::field(format!("{at}/name"), "must be a string"))?),
            };
            (email.as_str().ok_or_else(|| ApiError::field(format!("{at}/email"), "must be a string"))?, name, true)
        }
        _ => return Err(ApiError::field(at.to_string(), "must be an address string or {\"email\", \"name\"}")),
    };
    let email = Address::parse_mailbox(email).map_err(|_| {
        let ptr = if in_object { format!("{at}/email") } else { at.to_string() };
        ApiError::field(ptr, format!("{email:?} is not an address"))
    })?;
    let name = name.filter(|n| !n.is_empty()).map(str::to_string);
    if let Some(n) = &name {
        if let Some(c) = first_control(n, []) {
            return Err(ApiError::field(
                at.to_string(),
                format!("a display name must not contain control characters (found U+{:04X})", c as u32),
            ));
        }
        if n.len() > 256 {
            return Err(ApiError::field(at.to_string(), "the display name is longer than 256 octets"));
        }
    }
    Ok(Mailbox { email, name })
}

/// One mailbox or an array of them.
fn mailboxes(v: &Json, ptr: &str) -> Result<Vec<Mailbox>, ApiError> {
    match v {
        Json::Array(a) => a.iter().enumerate().map(|(i, x)| mailbox(x, At(ptr, Some(i)))).collect(),
        Json::Null => Ok(vec![]),
        one => Ok(vec![mailbox(one, At(ptr, None))?]),
    }
}

/// A JSON pointer token (RFC 6901 §3).
pub(crate) fn escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

/// A text part: as it is when [`crate::text::body_text`] says it can be (`plain`), else
/// encoded by mail-builder.
fn text_part(content_type: &'static str, (text, plain): (String, bool)) -> MimePart<'static> {
    let part = MimePart::new(content_type, BodyPart::Text(text.into()));
    if plain {
        part.transfer_encoding("7bit")
    } else {
        part
    }
}

/// `<random>.<milliseconds>@<hostname>`, written without the formatter (every API message
/// gets one).
fn message_id(random: u64, millis: u64, hostname: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = Vec::with_capacity(16 + 1 + 20 + 1 + hostname.len());
    id.extend((0..16).rev().map(|shift| HEX[(random >> (shift * 4)) as usize & 15]));
    id.push(b'.');
    mailgate_smtp::push_decimal(&mut id, millis);
    id.push(b'@');
    id.extend_from_slice(hostname.as_bytes());
    // Hex, digits and the host name (a `str`): UTF-8 throughout.
    String::from_utf8(id).unwrap_or_default()
}

fn mb_address(m: &Mailbox) -> MbAddress<'_> {
    MbAddress::new_address(m.name.as_deref(), m.email.as_str())
}

fn mb_list(list: &[Mailbox]) -> MbAddress<'_> {
    MbAddress::new_list(list.iter().map(mb_address).collect())
}

/// Values a request may hold beyond four per recipient: what the other fields can use
/// (metadata, headers, attachments, tags) with room to spare.
const MAX_OTHER_VALUES: usize = 50_000;

/// A request's recipients in order, each address once (compared without regard to case), at
/// most `max`: one more is refused at once, so a request naming a million addresses costs no
/// more than one naming `max` + 1. Short lists are searched; long ones keep a set.
pub(crate) struct Recipients {
    list: Vec<Address>,
    /// Lower-cased addresses of `list`, once it is longer than `SCAN`.
    seen: std::collections::HashSet<String>,
    max: usize,
}

impl Recipients {
    const SCAN: usize = 16;

    pub(crate) fn new(max: usize) -> Recipients {
        Recipients { list: vec![], seen: Default::default(), max }
    }

    /// Adds `a` unless it is there; `Err` when that makes more than `max`.
    pub(crate) fn add(&mut self, a: Address) -> Result<(), usize> {
        if self.list.len() < Self::SCAN {
            if self.list.iter().any(|r| r.as_str().eq_ignore_ascii_case(a.as_str())) {
                return Ok(());
            }
        } else {
            if self.seen.is_empty() {
                self.seen = self.list.iter().map(|r| r.as_str().to_ascii_lowercase()).collect();
            }
            if !self.seen.insert(a.as_str().to_ascii_lowercase()) {
                return Ok(());
            }
        }
        if self.list.len() == self.max {
            return Err(self.max);
        }
        self.list.push(a);
        Ok(())
    }

    pub(crate) fn into_vec(self) -> Vec<Address> {
        self.list
    }
}

/// The JSON values a request's body may hold: what a message's fields need, four for each
/// recipient it may have.
fn max_values(max_rcpts: usize) -> usize {
    MAX_OTHER_VALUES.saturating_add(max_rcpts.saturating_mul(4))
}

fn unreadable(e: ParseError) -> ApiError {
    match e {
        ParseError::Syntax(e) => ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}")),
        ParseError::TooManyValues(n) => {
            ApiError::bad_request("too_many_values", format!("the body holds more than {n} JSON values"))
        }
    }
}

/// Reads a JSON request. `hostname` goes into the Message-ID; `max_rcpts` bounds To+Cc+Bcc.
pub fn build(body: &[u8], hostname: &str, max_rcpts: usize) -> Result<Built, ApiError> {
    let v = Json::parse(body, max_values(max_rcpts)).map_err(unreadable)?;
    build_one(&v, hostname, max_rcpts)
}

/// Messages one batch request may carry.
pub const MAX_BATCH: usize = 500;

/// Reads a batch request (`POST /api/v1/messages/batch`): a JSON array of requests, each
/// read as [`build`] reads one, its errors' pointers starting with its index. The body as a
/// whole is refused when it is not such an array (or holds no message, or more than
/// [`MAX_BATCH`], or more JSON values than one request may); one message's errors are its own.
pub fn build_batch(body: &[u8], hostname: &str, max_rcpts: usize) -> Result<Vec<Result<Built, ApiError>>, ApiError> {
    let v = Json::parse_batch(body, max_values(max_rcpts)).map_err(unreadable)?;
    let Json::Array(list) = &v else {
        return Err(ApiError::field("", "the body must be a JSON array of messages"));
    };
    if list.is_empty() {
        return Err(ApiError::field("", "the batch holds no message"));
    }
    if list.len() > MAX_BATCH {
        return Err(ApiError::field("", format!("{} messages; at most {MAX_BATCH} per batch", list.len())));
    }
    Ok(list.iter().enumerate().map(|(i, m)| within(i, build_one(m, hostname, max_rcpts))).collect())
}

/// Message `i` of a batch: its error's pointer is prefixed with `/i`.
fn within(i: usize, r: Result<Built, ApiError>) -> Result<Built, ApiError> {
    r.map_err(|mut e| {
        e.pointer = Some(format!("/{i}{}", e.pointer.as_deref().unwrap_or("")));
        e
    })
}

/// Reads one request's value (the body, or a batch's element).
fn build_one(v: &Json, hostname: &str, max_rcpts: usize) -> Result<Built, ApiError> {
    let Json::Object(m) = v else {
        return Err(ApiError::field("", "the body must be a JSON object"));
    };
    if let Some(p) = v.first_duplicate() {
        return Err(ApiError::field(p, "is given more than once in its object"));
    }
    if let Some((k, _)) = m.iter().find(|(k, _)| !known(k)) {
        return Err(ApiError::field(format!("/{}", escape(k)), "unknown field"));
    }
    let get = |k: &str| v.get(k).filter(|v| !v.is_null());
    let from = mailbox(get("from").ok_or_else(|| ApiError::field("/from", "is required"))?, At("/from", None))?;
    let (to, cc, bcc) = (
        get("to").map(|v| mailboxes(v, "/to")).transpose()?.unwrap_or_default(),
        get("cc").map(|v| mailboxes(v, "/cc")).transpose()?.unwrap_or_default(),
        get("bcc").map(|v| mailboxes(v, "/bcc")).transpose()?.unwrap_or_default(),
    );
    let mut distinct = Recipients::new(max_rcpts);
    for m in to.iter().chain(&cc).chain(&bcc) {
        distinct
            .add(m.email.clone())
            .map_err(|max| ApiError::field("/to", format!("more than {max} recipients; at most {max} per message")))?;
    }
    let rcpts = distinct.into_vec();
    if rcpts.is_empty() {
        return Err(ApiError::field("/to", "at least one recipient (to, cc or bcc) is required"));
    }
    let reply_to = get("reply_to").map(|v| mailboxes(v, "/reply_to")).transpose()?.unwrap_or_default();
    let subject = get("subject").map(|v| string(v, "/subject")).transpose()?.unwrap_or("");
    plain_text(subject, "/subject", "the subject", true)?;
    if subject.len() > 998 {
        return Err(ApiError::field("/subject", "longer than 998 octets"));
    }
    let text = get("text").map(|v| body_text(v, "/text")).transpose()?;
    let html = get("html").map(|v| body_text(v, "/html")).transpose()?;
    if text.is_none() && html.is_none() {
        return Err(ApiError::field("/text", "text or html is required"));
    }
    let headers = match get("headers") {
        None => vec![],
        Some(h) => custom_headers(h)?,
    };
    let attachments = match get("attachments") {
        None => vec![],
        Some(a) => attachments(a)?,
    };
    let tags = match get("tags") {
        None => vec![],
        Some(Json::Array(a)) if a.len() <= MAX_TAGS => {
            let list = a.iter().enumerate().map(|(i, t)| string(t, &format!("/tags/{i}")));
            tags(list.collect::<Result<Vec<_>, _>>()?.into_iter(), "/tags")?
        }
        Some(_) => return Err(ApiError::field("/tags", format!("must be an array of at most {MAX_TAGS} strings"))),
    };
    let metadata = match get("metadata") {
        None => BTreeMap::new(),
        Some(Json::Object(o)) => metadata(o)?,
        Some(_) => return Err(ApiError::field("/metadata", "must be an object of strings")),
    };
    let idempotency_key =
        get("idempotency_key").map(|v| string(v, "/idempotency_key")).transpose()?.map(str::to_string);
    if let Some(k) = &idempotency_key {
        check_idempotency_key(k, "/idempotency_key")?;
    }

    let mut b = MessageBuilder::new().from(mb_address(&from)).message_id(message_id(
        rand::random(),
        mailgate_message::date::now_millis(),
        hostname,
    ));
    if !to.is_empty() {
        b = b.to(mb_list(&to));
    }
    if !cc.is_empty() {
        b = b.cc(mb_list(&cc));
    }
    if !reply_to.is_empty() {
        b = b.reply_to(mb_list(&reply_to));
    }
    if !subject.is_empty() {
        b = b.subject(Text::new(subject));
    }
    for (name, value) in headers {
        b = b.header(name, Text::new(value));
    }
    // The body as mail-builder's `text_body`/`html_body`/`attachment` arrange it, with text
    // parts that need no encoding kept as they are.
    let alternatives = match (text.map(|t| text_part("text/plain", t)), html.map(|h| text_part("text/html", h))) {
        (Some(t), Some(h)) => MimePart::new("multipart/alternative", vec![t, h]),
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => return Err(ApiError::field("/text", "text or html is required")),
    };
    let body = if attachments.is_empty() {
        alternatives
    } else {
        let mut parts = Vec::with_capacity(attachments.len() + 1);
        parts.push(alternatives);
        parts.extend(attachments.into_iter().map(|a| {
            let part = MimePart::new(a.content_type, BodyPart::Binary(a.content.into()));
            match a.content_id {
                Some(cid) => part.inline().cid(cid),
                None => part.attachment(a.filename),
            }
        }));
        MimePart::new("multipart/mixed", parts)
    };
    b = b.body(body);
    let message = b.write_to_vec().map_err(|e| ApiError::bad_request("unbuildable", e.to_string()))?;
    Ok(Built { from: from.email, rcpts, message, tags, metadata, idempotency_key })
}

/// A request's tags (JSON `tags`, or the raw way's `?tag=` parameters): at most [`MAX_TAGS`],
/// each 1 to [`MAX_TAG_LEN`] octets without control characters (they are kept with the
/// message and repeated in every event). `ptr` names the field; a JSON array's elements are
/// named by index.
pub(crate) fn tags<'a>(list: impl Iterator<Item = &'a str>, ptr: &str) -> Result<Vec<String>, ApiError> {
    let mut out = vec![];
    for (i, t) in list.enumerate() {
        let at = || if ptr == "/tags" { format!("{ptr}/{i}") } else { ptr.to_string() };
        if out.len() == MAX_TAGS {
            return Err(ApiError::field(ptr, format!("at most {MAX_TAGS} tags")));
        }
        if let Some(c) = first_control(t, []) {
            return Err(ApiError::field(
                at(),
                format!("a tag must not contain control characters (found U+{:04X})", c as u32),
            ));
        }
        if t.is_empty() || t.len() > MAX_TAG_LEN {
            return Err(ApiError::field(at(), format!("a tag has 1 to {MAX_TAG_LEN} octets")));
        }
        out.push(t.to_string());
    }
    Ok(out)
}

pub(crate) fn check_idempotency_key(k: &str, ptr: &str) -> Result<(), ApiError> {
    if k.is_empty() || k.len() > 255 || !k.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(ApiError::field(ptr, "an idempotency key has 1 to 255 printable ASCII characters"));
    }
    Ok(())
}

/// A name given twice keeps its last value (both count towards the size).
fn metadata(o: &[(Cow<str>, Json)]) -> Result<BTreeMap<String, String>, ApiError> {
    let mut size = 0;
    let mut out = BTreeMap::new();
    for (k, v) in o {
        let p = format!("/metadata/{}", escape(k));
        let v = string(v, &p)?;
        plain_text(k, &p, "a metadata key", false)?;
        plain_text(v, &p, "a metadata value", true)?;
        size += k.len() + v.len();
        if size > MAX_METADATA {
            return Err(ApiError::field("/metadata", format!("more than {MAX_METADATA} octets")));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// `{"X-Name": "value"}` or `[{"name": "X-Name", "value": "value"}]`.
fn custom_headers(h: &Json) -> Result<Vec<(String, String)>, ApiError> {
    let too_many = |n: usize| n > MAX_HEADERS;
    let pairs: Vec<(String, &Json, String)> = match h {
        Json::Object(o) if !too_many(o.len()) => {
            Json::members(o).map(|(k, v)| (k.to_string(), v, format!("/headers/{}", escape(k)))).collect()
        }
        Json::Array(a) if !too_many(a.len()) => a
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let p = format!("/headers/{i}");
                let name = x.get("name").ok_or_else(|| ApiError::field(format!("{p}/name"), "is required"))?;
                let value = x.get("value").ok_or_else(|| ApiError::field(format!("{p}/value"), "is required"))?;
                Ok((string(name, &format!("{p}/name"))?.to_string(), value, format!("{p}/value")))
            })
            .collect::<Result<_, ApiError>>()?,
        Json::Object(_) | Json::Array(_) => {
            return Err(ApiError::field("/headers", format!("at most {MAX_HEADERS} fields")))
        }
        _ => return Err(ApiError::field("/headers", "must be an object or an array of {name, value}")),
    };
    let mut out = vec![];
    for (name, value, p) in pairs {
        // RFC 5322 §2.2: a field name is printable ASCII without ':'.
        if name.is_empty() || name.len() > 76 || !name.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b':') {
            return Err(ApiError::field(&p, format!("{name:?} is not a header field name")));
        }
        if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(&name))
            || name.to_ascii_lowercase().starts_with("arc-")
            || name.to_ascii_lowercase().starts_with("content-")
        {
            return Err(ApiError::field(&p, format!("{name} is set by the API, not through headers")));
        }
        let value = string(value, &p)?;
        plain_text(value, &p, "a header value", true)?;
        if value.len() > 998 {
            return Err(ApiError::field(&p, "longer than 998 octets"));
        }
        out.push((name, value.to_string()));
    }
    Ok(out)
}

struct Attachment {
    filename: String,
    content_type: String,
    content: Vec<u8>,
    content_id: Option<String>,
}

fn attachments(a: &Json) -> Result<Vec<Attachment>, ApiError> {
    let Json::Array(list) = a else {
        return Err(ApiError::field("/attachments", "must be an array"));
    };
    if list.len() > MAX_ATTACHMENTS {
        return Err(ApiError::field("/attachments", format!("at most {MAX_ATTACHMENTS}")));
    }
    let mut out = vec![];
    for (i, x) in list.iter().enumerate() {
        let p = format!("/attachments/{i}");
        let Json::Object(o) = x else { return Err(ApiError::field(p, "must be an object")) };
        if let Some((k, _)) =
            o.iter().find(|(k, _)| !["filename", "content_type", "content_base64", "content_id"].contains(&&**k))
        {
            return Err(ApiError::field(format!("{p}/{}", escape(k)), "unknown field"));
        }
        let field = |k: &str| -> Result<Option<&str>, ApiError> {
            x.get(k).filter(|v| !v.is_null()).map(|v| string(v, &format!("{p}/{k}"))).transpose()
        };
        let filename = field("filename")?.ok_or_else(|| ApiError::field(format!("{p}/filename"), "is required"))?;
        plain_text(filename, &format!("{p}/filename"), "a file name", false)?;
        if filename.is_empty() || filename.len() > 255 {
            return Err(ApiError::field(format!("{p}/filename"), "a file name has 1 to 255 octets"));
        }
        let ct = field("content_type")?.unwrap_or("application/octet-stream");
        if !valid_content_type(ct) {
            return Err(ApiError::field(format!("{p}/content_type"), format!("{ct:?} is not a type/subtype")));
        }
        let b64 =
            field("content_base64")?.ok_or_else(|| ApiError::field(format!("{p}/content_base64"), "is required"))?;
        let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let content = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|e| ApiError::field(format!("{p}/content_base64"), format!("not base64: {e}")))?;
        let content_id = field("content_id")?.map(str::to_string);
        if let Some(c) = &content_id {
            if c.is_empty() || c.len() > 255 || !c.bytes().all(|b| (0x21..0x7f).contains(&b) && !b"<>\"\\".contains(&b))
            {
                return Err(ApiError::field(format!("{p}/content_id"), "not a content id"));
            }
        }
        out.push(Attachment {
            filename: filename.to_string(),
            content_type: ct.to_ascii_lowercase(),
            content,
            content_id,
        });
    }
    Ok(out)
}

/// `type/subtype` of RFC 2045 tokens (parameters are not taken: mail-builder writes them).
fn valid_content_type(ct: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes().all(|b| (0x21..0x7f).contains(&b) && !b"()<>@,;:\\\"/[]?=".contains(&b))
    };
    ct.split_once('/').is_some_and(|(t, s)| token(t) && token(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A built message without its Message-ID, Date and MIME boundaries (new for every
    /// message).
    fn without_ids(m: &[u8]) -> String {
        let mut m = String::from_utf8_lossy(m).into_owned();
        let bounds: Vec<String> =
            m.split("boundary=\"").skip(1).filter_map(|r| r.split('"').next()).map(str::to_string).collect();
        for b in bounds {
            m = m.replace(&b, "BOUNDARY");
        }
        m.split("\r\n")
            .filter(|l| !l.starts_with("Message-ID:") && !l.starts_with("Date:"))
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    #[test]
    fn a_batch_is_an_array_of_one_to_500_requests() {
        let one = r#"{"from": "a@b.test", "to": "c@d.test", "text": "t"}"#;
        for (body, why) in [
            (one.to_string(), "the body must be a JSON array of messages"),
            ("[]".into(), "the batch holds no message"),
            (format!("[{}]", [one; 501].join(",")), "501 messages; at most 500 per batch"),
        ] {
            let e = build_batch(body.as_bytes(), "gw.test", 10).map(|_| ()).unwrap_err();
            assert_eq!((e.status.as_u16(), e.message.as_str(), e.pointer.as_deref()), (400, why, Some("")));
        }
        let ok = build_batch(format!("[{}]", [one; 500].join(",")).as_bytes(), "gw.test", 10).unwrap();
        assert!(ok.len() == 500 && ok.iter().all(Result::is_ok));
        // One message's faults are its own, wherever they are.
        let body =
            format!(r#"[{one}, 7, {{"from": "a@b.test", "to": "c@d.test", "text": "t", "to": "e@f.test"}}, {one}]"#);
        let got = build_batch(body.as_bytes(), "gw.test", 10).unwrap();
        let pointers: Vec<_> = got.iter().map(|r| r.as_ref().err().and_then(|e| e.pointer.clone())).collect();
        assert_eq!(pointers, [None, Some("/1".into()), Some("/2/to".into()), None]);
    }

    /// `s` written as a JSON string, then decoded as a request's `text` is.
    fn body_text(s: &str) -> (String, bool) {
        let written = serde_json::to_string(s).unwrap();
        crate::text::body_text(&written[1..written.len() - 1]).unwrap()
    }

    /// The byte scan finds exactly what `char::is_control` does, for every scalar value, alone
    /// and after other text, with and without allowed characters.
    #[test]
    fn first_control_agrees_with_is_control_for_every_char() {
        let first_control = |s: &str, allowed: &[u8]| match allowed {
            b"" => first_control(s, []),
            b"\t" => first_control(s, [b'\t']),
            _ => first_control(s, *b"\t\r\n\x0c"),
        };
        for allowed in [&b""[..], b"\t", b"\t\r\n\x0c"] {
            for c in (0..=0x10ffffu32).filter_map(char::from_u32) {
                let want = (c.is_control() && !(c.is_ascii() && allowed.contains(&(c as u8)))).then_some(c);
                let mut buf = [0u8; 4];
                let one = c.encode_utf8(&mut buf);
                assert_eq!(first_control(one, allowed), want, "U+{:04X}", c as u32);
                if (c as u32) < 0x800 {
                    let text = format!("é\u{a0}x{c}\u{85}");
                    let then = want.or(Some('\u{85}'));
                    assert_eq!(first_control(&text, allowed), then, "U+{:04X}", c as u32);
                }
            }
        }
        // Past the 32-octet blocks: each kind at every place of a longer text (C1's two octets
        // across a block's edge too), after an allowed one.
        let base = "abcdefghij".repeat(10);
        for at in 0..=base.len() {
            for c in ['\u{1}', '\u{7f}', '\u{85}', '\u{9f}', '\t', '\u{a0}', 'é'] {
                let mut t = base.clone();
                t.insert(at, c);
                t.insert(at / 2, '\t');
                let want = c.is_control().then_some(c).filter(|c| *c != '\t');
                assert_eq!(first_control(&t, b"\t"), want, "{c:?} at {at}");
            }
        }
    }

    fn err(body: &str) -> ApiError {
        build(body.as_bytes(), "gw.test", 100).expect_err(body)
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(err("{").code, "malformed_json");
        assert_eq!(err("[]").pointer.as_deref(), Some(""));
        assert_eq!(err(r#"{"to":"a@b.test","text":"x"}"#).pointer.as_deref(), Some("/from"));
        assert_eq!(err(r#"{"from":"a@b.test","text":"x"}"#).pointer.as_deref(), Some("/to"));
        assert_eq!(err(r#"{"from":"a@b.test","to":["x@y.test","bad"],"text":"x"}"#).pointer.as_deref(), Some("/to/1"));
        assert_eq!(
            err(r#"{"from":"a@b.test","to":[{"email":"x@"}],"text":"x"}"#).pointer.as_deref(),
            Some("/to/0/email")
        );
        assert_eq!(
            err(r#"{"from":"a@b.test","to":"x@y.test","text":"x","sbject":"s"}"#).pointer.as_deref(),
            Some("/sbject")
        );
        for injected in ["a\r\nBcc: v@x.test", "a\nb", "a\rb", "a\u{0}b", "a\u{85}b"] {
            let body =
                serde_json::json!({"from":"a@b.test","to":"x@y.test","text":"x","subject": injected}).to_string();
            assert_eq!(err(&body).pointer.as_deref(), Some("/subject"), "{injected:?}");
            let body = serde_json::json!({"from":"a@b.test","to":"x@y.test","text":"x","headers":{"X-A": injected}})
                .to_string();
            assert_eq!(err(&body).pointer.as_deref(), Some("/headers/X-A"), "{injected:?}");
        }
        let body = serde_json::json!({"from":"a@b.test","to":"x@y.test","text":"x","headers":{"Bcc":"v@x.test"}});
        assert_eq!(err(&body.to_string()).pointer.as_deref(), Some("/headers/Bcc"));
        let body = serde_json::json!({"from":"a@b.test","to":"x@y.test","text":"x","headers":{"X:Y":"v"}});
        assert_eq!(err(&body.to_string()).pointer.as_deref(), Some("/headers/X:Y"));
        let body = serde_json::json!({"from":"a@b.test","to":"x@y.test","text":"x",
            "attachments":[{"filename":"a.txt","content_base64":"!!!"}]});
        assert_eq!(err(&body.to_string()).pointer.as_deref(), Some("/attachments/0/content_base64"));
        let many: Vec<String> = (0..101).map(|i| format!("r{i}@y.test")).collect();
        let body = serde_json::json!({"from":"a@b.test","to":many,"text":"x"});
        assert_eq!(err(&body.to_string()).pointer.as_deref(), Some("/to"));
    }

    /// JSON nested to any depth, in any field (arrays, objects, both), is refused as a request
    /// error: never a stack overflow while reading or dropping it.
    #[test]
    fn any_nesting_depth_is_a_bad_request() {
        for depth in [1, 2, 127, 128, 129, 1_000, 100_000] {
            for (open, close) in [("[", "]"), ("{\"a\":", "}"), ("[{\"b\":", "}]")] {
                let deep = format!("{}1{}", open.repeat(depth), close.repeat(depth));
                for field in ["from", "to", "text", "metadata", "headers", "attachments", "tags", "x"] {
                    let body = format!(r#"{{"from":"a@b.test","to":"x@y.test","text":"t","{field}":{deep}}}"#);
                    let e = build(body.as_bytes(), "gw.test", 100).expect_err(&body[..body.len().min(80)]);
                    assert_eq!(e.status.as_u16(), 400, "{field} {depth} {open}");
                }
            }
        }
    }

    /// Each address once, without regard to case, below and above the length where a set
    /// takes over from the search; the first one beyond `max` is refused.
    #[test]
    fn recipients_are_distinct_and_bounded() {
        let a = |s: &str| Address::parse_mailbox(s).unwrap();
        for n in [1, 15, 16, 17, 40] {
            let mut r = Recipients::new(n);
            for i in 0..n {
                r.add(a(&format!("u{i}@x.test"))).unwrap();
            }
            for i in 0..n {
                r.add(a(&format!("U{i}@X.TEST"))).unwrap();
            }
            assert_eq!(r.add(a("another@x.test")), Err(n), "{n}");
            let list = r.into_vec();
            assert_eq!(list.len(), n);
            assert_eq!(list[n - 1].as_str(), format!("u{}@x.test", n - 1), "the first spelling is kept");
        }
    }

    /// A body of many values is refused as such, however the recipients are given, and many
    /// recipients are refused at the first one too many.
    #[test]
    fn many_values_and_many_recipients_are_refused() {
        let many: Vec<String> = (0..200_000).map(|i| format!("r{i}@y.test")).collect();
        let body = serde_json::json!({"from": "a@b.test", "to": many, "text": "t"}).to_string();
        let e = err(&body);
        assert_eq!((e.status.as_u16(), e.code), (400, "too_many_values"), "{e:?}");
        let zeros =
            format!(r#"{{"from":"a@b.test","to":"x@y.test","text":"t","metadata":[{}0]}}"#, "0,".repeat(100_000));
        assert_eq!(err(&zeros).code, "too_many_values");
        let body = serde_json::json!({"from": "a@b.test", "to": &many[..5_000], "text": "t"}).to_string();
        let e = err(&body);
        assert_eq!((e.pointer.as_deref(), e.status.as_u16()), (Some("/to"), 400), "{e:?}");
        let same: Vec<String> = (0..300).map(|i| format!("R{}@Y.test", i % 100)).collect();
        let body =
            serde_json::json!({"from": "a@b.test", "to": same, "cc": &many[100_000..100_050], "text": "t"}).to_string();
        let e = err(&body);
        assert_eq!(e.pointer.as_deref(), Some("/to"), "150 distinct: {e:?}");
    }

    #[test]
    fn every_line_end_becomes_one_crlf() {
        for (i, o) in [
            ("", ""),
            ("a", "a"),
            ("a\nb", "a\r\nb"),
            ("a\r\nb\rc\n", "a\r\nb\r\nc\r\n"),
            ("\r\r\n\n\r", "\r\n\r\n\r\n\r\n"),
            ("ü\rü\r\n", "ü\r\nü\r\n"),
        ] {
            assert_eq!(body_text(i).0, o, "{i:?}");
        }
    }

    /// Text goes as it is only when it is ASCII, no line is longer than 78 octets and none
    /// ends in a blank, wherever the line is (first, middle, last; CR, LF or CRLF ends).
    #[test]
    fn text_is_7bit_only_when_it_can_be() {
        let line = |n: usize| "x".repeat(n);
        for end in ["\n", "\r\n", "\r"] {
            for (n, plain) in [(0, true), (1, true), (77, true), (78, true), (79, false), (998, false)] {
                for at in 0..3 {
                    let mut lines = [line(10), line(10), line(10)];
                    lines[at] = line(n);
                    let text = lines.join(end);
                    assert_eq!(body_text(&text).1, plain, "{n} octets at line {at}, ends {end:?}");
                    assert_eq!(body_text(&format!("{text}{end}")).1, plain, "{n} octets at {at}, text ends {end:?}");
                }
            }
            for bad in ["a \nb", "a\t\nb", "a\nb ", "é\nb", "a\nb\u{a0}"] {
                assert!(!body_text(&bad.replace('\n', end)).1, "{bad:?} with {end:?}");
            }
        }
        assert!(body_text("").1);
    }

    /// The body of a built message: 7bit text verbatim, and mail-builder's own encoding for
    /// what cannot go so (it decodes back to the text).
    #[test]
    fn text_parts_are_encoded_only_when_needed() {
        let built = |text: &str| {
            let body = serde_json::json!({"from": "a@b.test", "to": "x@y.test", "text": text});
            String::from_utf8(build(body.to_string().as_bytes(), "gw.test", 10).unwrap().message).unwrap()
        };
        let short = "a".repeat(76) + "\n" + &"b".repeat(78) + "\n";
        let m = built(&short);
        assert!(m.contains("Content-Transfer-Encoding: 7bit\r\n\r\n"), "{m}");
        assert!(m.ends_with(&short.replace('\n', "\r\n")), "{m}");
        for text in ["c".repeat(79), "ünïcode\n".to_string(), "trailing \nblank".to_string()] {
            let m = built(&text);
            assert!(!m.contains("7bit"), "{text:?}: {m}");
            assert!(m.contains("Content-Transfer-Encoding: quoted-printable") || m.contains("base64"), "{m}");
        }
    }

    /// Tags: up to 20, each 1 to 128 octets without control characters, errors naming the
    /// element (JSON) or the parameter (query).
    #[test]
    fn tags_are_bounded_and_plain() {
        let ok = |list: &[&str]| tags(list.iter().copied(), "/tags");
        assert_eq!(ok(&["a", &"b".repeat(128)]).unwrap(), ["a".to_string(), "b".repeat(128)]);
        assert_eq!(ok(&["t"; 20]).unwrap().len(), 20);
        assert_eq!(ok(&["t"; 21]).unwrap_err().pointer.as_deref(), Some("/tags"));
        for (bad, at) in [
            (&["a", ""][..], "/tags/1"),
            (&["b".repeat(129).leak() as &str], "/tags/0"),
            (&["a", "b", "c\r\nd"], "/tags/2"),
        ] {
            assert_eq!(ok(bad).unwrap_err().pointer.as_deref(), Some(at), "{bad:?}");
            assert_eq!(tags(bad.iter().copied(), "?tag").unwrap_err().pointer.as_deref(), Some("?tag"), "{bad:?}");
        }
        for c in ['\u{0}', '\t', '\u{7f}', '\u{85}'] {
            assert!(ok(&[&format!("a{c}")]).is_err(), "{c:?}");
        }
    }

    /// Whatever a request holds, a message the API builds passes the SMTP content rules it is
    /// then held to (CRLF only, no NUL, no line over 998 octets): a request that is valid field
    /// by field never ends in a 422 about the message the gateway wrote. Random requests from
    /// a seeded generator: long words, encoded-word material, blanks, every line end, text
    /// that is and is not 7bit.
    #[test]
    fn built_messages_pass_the_content_rules() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let pieces = [
            "a",
            "Z",
            "0",
            " ",
            "  ",
            "\t",
            "\r\n",
            "\n",
            "\r",
            "=",
            "?",
            "=?utf-8?q?x?=",
            "\"",
            "<",
            ">",
            "@",
            ",",
            ";",
            ":",
            "(",
            ")",
            "\\",
            "é",
            "€",
            "😀",
            "\u{a0}",
            "-",
            ".",
            "From ",
        ];
        // Line ends only in bodies, tabs only where a field takes them; now and then one of
        // them anyway (a refusal).
        let text = |next: &mut dyn FnMut(usize) -> usize, max: usize, lines: bool, tab: bool| {
            let mut t = String::new();
            let long = next(4) == 0;
            let stray = next(10) == 0;
            while t.len() < max && next(20) != 0 {
                if long {
                    t.push_str(&"w".repeat(next(400)));
                }
                let p = pieces[next(pieces.len())];
                if stray || (lines || !p.contains(['\r', '\n'])) && (tab || !p.contains('\t')) {
                    t.push_str(p);
                }
            }
            t
        };
        let (mut built, mut refused) = (0, 0);
        for _ in 0..3_000 {
            let body = serde_json::json!({
                "from": {"email": "a@b.test", "name": text(&mut next, 300, false, false)},
                "to": [format!("{}@y.test", "r".repeat(1 + next(60))), "Two <two@y.test>"],
                "subject": text(&mut next, 1_000, false, true),
                "text": text(&mut next, 3_000, true, true),
                "html": if next(2) == 0 { serde_json::Value::Null } else { text(&mut next, 2_000, true, true).into() },
                "headers": {format!("X-{}", "h".repeat(next(74))): text(&mut next, 1_000, false, true)},
                "attachments": [{"filename": text(&mut next, 255, false, false) + "f", "content_base64": "aGVsbG8="}],
            });
            let one = build(body.to_string().as_bytes(), "gw.test", 10);
            // The same request as a batch's second message reads the same, its errors named
            // within the batch.
            let batch = build_batch(format!("[{body},{body}]").as_bytes(), "gw.test", 10).unwrap();
            match (&one, &batch[1]) {
                (Ok(a), Ok(b)) => assert_eq!(without_ids(&a.message), without_ids(&b.message), "{body}"),
                (Err(a), Err(b)) => {
                    assert_eq!((a.status, a.code, &a.message), (b.status, b.code, &b.message));
                    assert_eq!(format!("/1{}", a.pointer.as_deref().unwrap_or("")), b.pointer.as_deref().unwrap());
                }
                _ => panic!("{body}: {one:?} as one, {:?} in a batch", batch[1]),
            }
            match one {
                Ok(b) => {
                    built += 1;
                    assert!(
                        mailgate_smtp::content::as_stored(&b.message, u64::MAX, 998).is_some(),
                        "{body}\n{}",
                        String::from_utf8_lossy(&b.message)
                    );
                }
                Err(e) => {
                    assert_eq!(e.status.as_u16(), 400, "{e:?}");
                    refused += 1;
                }
            }
        }
        assert!(built > 300 && refused > 300, "both kinds were drawn: {built} built, {refused} refused");
    }

    #[test]
    fn message_ids_are_hex_dot_millis_at_host() {
        assert_eq!(message_id(0, 0, "h.test"), "0000000000000000.0@h.test");
        assert_eq!(message_id(u64::MAX, u64::MAX, "h"), format!("ffffffffffffffff.{}@h", u64::MAX));
        assert_eq!(message_id(0x0123_4567_89ab_cdef, 1_764_500_000_123, "gw"), "0123456789abcdef.1764500000123@gw");
    }

    #[test]
    fn builds_a_message() {
        let body = serde_json::json!({
            "from": {"email": "shop@b.test", "name": "Ünïcode Shop"},
            "to": ["Ann <ann@y.test>", "ANN@y.test"],
            "bcc": "hidden@z.test",
            "subject": "Your receipt — ünïcode",
            "text": "line 1\nline 2\n",
            "headers": {"X-Campaign": "welcome"},
            "attachments": [{"filename": "r.pdf", "content_type": "application/pdf", "content_base64": "JVBERi0xLjQK"}],
            "tags": ["receipt"], "metadata": {"order": "42"}
        });
        let b = build(body.to_string().as_bytes(), "gw.test", 100).unwrap();
        let rcpts: Vec<&str> = b.rcpts.iter().map(|a| a.as_str()).collect();
        assert_eq!(rcpts, ["ann@y.test", "hidden@z.test"]);
        let text = String::from_utf8(b.message).unwrap();
        assert!(text.is_ascii(), "encoded words and transfer encodings: {text}");
        assert!(!text.to_ascii_lowercase().contains("hidden@z.test"), "no Bcc field");
        assert!(text.contains("X-Campaign: welcome\r\n") && text.contains("@gw.test>"), "{text}");
        assert!(!text.replace("\r\n", "").contains('\n'), "CRLF only");
        assert_eq!(b.metadata["order"], "42");
    }
}
