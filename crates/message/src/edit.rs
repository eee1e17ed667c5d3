//! Header and body edits on a message before it is spooled. Edits work on the raw header
//! section (folded fields stay whole); every name and value is checked so that an edit cannot
//! inject a line end or a malformed field. An invalid edit is refused (and reported), never
//! applied in part.

/// One change to the message content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Append a field.
    AddHeader { name: String, value: String },
    /// Remove every field of that name.
    RemoveHeader { name: String },
    /// Replace the `index`-th field of that name (0-based); an empty value removes it, and a
    /// missing one is added.
    ChangeHeader { name: String, index: u32, value: String },
    /// Replace the body; line ends are made canonical.
    ReplaceBody(Vec<u8>),
}

/// Longest field name an edit may use (RFC 5322 §2.1.1 keeps a line within 78 characters).
pub const MAX_NAME: usize = 76;
/// Longest field value an edit may set, in octets.
pub const MAX_VALUE: usize = 8000;

/// Why an edit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("invalid field name {0:?}")]
    Name(String),
    #[error("invalid value for {0} (line end, NUL or over {MAX_VALUE} octets)")]
    Value(String),
    #[error("replacement body of {0} octets is over the message size limit")]
    BodyTooBig(usize),
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= MAX_NAME && n.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

fn valid_value(v: &str) -> bool {
    v.len() <= MAX_VALUE && !v.contains(['\r', '\n', '\0'])
}

/// One header field: its name and its whole raw text (all folded lines, with CRLFs).
struct Field {
    name: String,
    raw: Vec<u8>,
}

fn split(data: &[u8]) -> (Vec<Field>, &[u8]) {
    // A message that starts with the empty line has no header fields at all.
    let end = match data.starts_with(b"\r\n") {
        true => 0,
        false => crate::blank_line(data).map_or(data.len(), |i| i + 2),
    };
    let (head, body) = data.split_at(end);
    let mut fields: Vec<Field> = vec![];
    for line in head.split_inclusive(|b| *b == b'\n') {
        let folded = matches!(line.first(), Some(b' ' | b'\t'));
        match fields.last_mut() {
            Some(f) if folded => f.raw.extend_from_slice(line),
            _ => {
                let name = line
                    .split(|b| *b == b':')
                    .next()
                    .map(|n| String::from_utf8_lossy(n).trim().to_string())
                    .unwrap_or_default();
                fields.push(Field { name, raw: line.to_vec() });
            }
        }
    }
    (fields, body)
}

fn field(name: &str, value: &str) -> Field {
    Field { name: name.to_string(), raw: fold(&format!("{name}: {value}")).into_bytes() }
}

/// Folds a header line at spaces so that lines stay near 78 characters (RFC 5322 §2.1.1);
/// a run without spaces stays whole (the receiver's 998-octet limit is checked elsewhere).
pub fn fold(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 8);
    let mut width = 0;
    for (i, word) in line.split(' ').enumerate() {
        if i > 0 {
            if width + 1 + word.len() > 78 && width > 0 {
                out.push_str("\r\n ");
                width = 1;
            } else {
                out.push(' ');
                width += 1;
            }
        }
        out.push_str(word);
        width += word.len();
    }
    out.push_str("\r\n");
    out
}

/// The outcome of [`apply`].
#[derive(Debug, Default)]
pub struct Applied {
    /// The new message, when an edit changed it.
    pub data: Option<Vec<u8>>,
    /// The edits refused, each with its reason, in order.
    pub refused: Vec<(usize, EditError)>,
}

/// Applies `edits` in order to `data` (CRLF lines, as received). A replacement body may be
/// at most `max_body` octets (the message size limit).
pub fn apply(data: &[u8], edits: &[Edit], max_body: usize) -> Applied {
    if edits.is_empty() {
        return Applied::default();
    }
    if edits.iter().all(|e| matches!(e, Edit::AddHeader { .. })) {
        if let Some(out) = only_added(data, edits) {
            return out;
        }
    }
    apply_fields(data, edits, max_body)
}

/// [`apply`] when every edit adds a field (what most plugins do): the fields are spliced in
/// where `apply_fields` puts them, with one copy of the message instead of the header split
/// into fields and the body copied twice. `None` for a message without the empty line after
/// its header section (the general way adds one).
fn only_added(data: &[u8], edits: &[Edit]) -> Option<Applied> {
    let end = match data.starts_with(b"\r\n") {
        true => 0,
        false => crate::blank_line(data)? + 2,
    };
    // Below a first `Received:` field and its continuation lines, as `apply_fields` does.
    let head = &data[..end];
    let first_line = head.iter().position(|b| *b == b'\n').map_or(head.len(), |i| i + 1);
    let first_name = head[..first_line].split(|b| *b == b':').next().unwrap_or_default();
    let at = if end > 0 && String::from_utf8_lossy(first_name).trim().eq_ignore_ascii_case("received") {
        let mut at = first_line;
        while at < end && matches!(head[at], b' ' | b'\t') {
            at = head[at..].iter().position(|b| *b == b'\n').map_or(end, |i| at + i + 1);
        }
        at
    } else {
        0
    };
    let mut out = Applied::default();
    let mut added = Vec::new();
    for (i, e) in edits.iter().enumerate() {
        let Edit::AddHeader { name, value } = e else { return None };
        match check_field(name, value) {
            Ok(()) => added.extend_from_slice(&field(name, value).raw),
            Err(r) => out.refused.push((i, r)),
        }
    }
    if !added.is_empty() {
        let mut msg = Vec::with_capacity(data.len() + added.len());
        msg.extend_from_slice(&data[..at]);
        msg.extend_from_slice(&added);
        msg.extend_from_slice(&data[at..]);
        out.data = Some(msg);
    }
    Some(out)
}

fn check_field(n: &str, v: &str) -> Result<(), EditError> {
    if !valid_name(n) {
        Err(EditError::Name(n.chars().take(80).collect()))
    } else if !valid_value(v) {
        Err(EditError::Value(n.to_string()))
    } else {
        Ok(())
    }
}

/// [`apply`] for any edits: the header split into fields, edited, and put back together.
fn apply_fields(data: &[u8], edits: &[Edit], max_body: usize) -> Applied {
    let mut out = Applied::default();
    let (mut fields, body) = split(data);
    let mut body = body.to_vec();
    let mut changed = false;
    // Added fields go on top, where trace fields belong, in the order they were added — below
    // a first `Received:` field (the one this hop wrote: the trace block stays whole).
    let mut top = usize::from(fields.first().is_some_and(|f| f.name.eq_ignore_ascii_case("received")));
    for (i, e) in edits.iter().enumerate() {
        let check = check_field;
        match e {
            Edit::AddHeader { name, value } => match check(name, value) {
                Ok(()) => {
                    fields.insert(top, field(name, value));
                    top += 1;
                    changed = true;
                }
                Err(r) => out.refused.push((i, r)),
            },
            Edit::RemoveHeader { name } => {
                let before = fields.len();
                // The added block at the top shrinks by the added fields removed.
                top -= fields[..top].iter().filter(|f| f.name.eq_ignore_ascii_case(name)).count();
                fields.retain(|f| !f.name.eq_ignore_ascii_case(name));
                changed |= fields.len() != before;
            }
            Edit::ChangeHeader { name, index, value } => {
                if let Err(r) = check(name, value) {
                    out.refused.push((i, r));
                    continue;
                }
                let pos = fields
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.name.eq_ignore_ascii_case(name))
                    .map(|(i, _)| i)
                    .nth(*index as usize);
                match (pos, value.is_empty()) {
                    (Some(i), true) => {
                        fields.remove(i);
                        if i < top {
                            top -= 1;
                        }
                    }
                    (Some(i), false) => fields[i] = field(&fields[i].name.clone(), value),
                    (None, false) => {
                        fields.insert(top, field(name, value));
                        top += 1;
                    }
                    (None, true) => {}
                }
                changed = true;
            }
            Edit::ReplaceBody(b) if b.len() > max_body => out.refused.push((i, EditError::BodyTooBig(b.len()))),
            Edit::ReplaceBody(b) => {
                // Canonical CRLF line ends whatever was given, after the empty line.
                body = b"\r\n".to_vec();
                body.extend_from_slice(&mailgate_smtp::content::to_crlf(b));
                changed = true;
            }
        }
    }
    if changed {
        let mut msg = Vec::with_capacity(data.len() + 256);
        for f in &fields {
            msg.extend_from_slice(&f.raw);
        }
        if !body.starts_with(b"\r\n") {
            msg.extend_from_slice(b"\r\n");
        }
        msg.extend_from_slice(&body);
        out.data = Some(msg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Received: x\r\nSubject: one\r\n two\r\nX-A: 1\r\nX-A: 2\r\n\r\nbody\r\n";

    fn add(n: &str, v: &str) -> Edit {
        Edit::AddHeader { name: n.into(), value: v.into() }
    }

    #[test]
    fn long_values_are_folded_at_spaces() {
        let v = (0..40).map(|i| format!("RULE_{i}=1.0")).collect::<Vec<_>>().join(" ");
        let f = field("X-Spam-Status", &v);
        let text = String::from_utf8(f.raw).unwrap();
        assert!(text.lines().all(|l| l.len() <= 80), "{text}");
        assert_eq!(text.replace("\r\n ", " "), format!("X-Spam-Status: {v}\r\n"));
    }

    #[test]
    fn header_edits_keep_folding_and_body() {
        let e = apply(
            MSG,
            &[
                add("X-New", "yes"),
                Edit::ChangeHeader { name: "x-a".into(), index: 1, value: "two".into() },
                Edit::RemoveHeader { name: "subject".into() },
            ],
            1000,
        );
        assert_eq!(
            String::from_utf8(e.data.unwrap()).unwrap(),
            "Received: x\r\nX-New: yes\r\nX-A: 1\r\nX-A: two\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn injection_and_oversize_are_refused() {
        let e = apply(
            MSG,
            &[
                add("X-Evil", "a\r\nBcc: victim@x"),
                add("Bad Name", "v"),
                add("X-Nul", "a\0b"),
                add("X-Big", &"v".repeat(MAX_VALUE + 1)),
                add(&"N".repeat(MAX_NAME + 1), "v"),
                Edit::ReplaceBody(vec![b'x'; 1001]),
            ],
            1000,
        );
        assert!(e.data.is_none());
        assert_eq!(e.refused.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5]);
    }

    /// Adding fields the quick way gives what the general way gives, for messages of every
    /// shape: with and without a first `Received:` (folded or not, any case, without a colon),
    /// without fields, without the empty line, with bare LFs; valid and refused fields.
    #[test]
    fn only_added_fields_agree_with_the_general_way() {
        let messages: &[&[u8]] = &[
            MSG,
            b"Subject: x\r\n\r\nbody\r\n",
            b"Received: from a\r\n\tby b\r\n  for c\r\nSubject: x\r\n\r\nbody\r\n",
            b"RECEIVED : x\r\n\r\n",
            b"Received\r\nX: y\r\n\r\nb\r\n",
            b"Received: only\r\n\r\n",
            b"Received: x\r\n folded to the end\r\n\r\nb",
            b"\r\nbody without fields\r\n",
            b"Subject: no empty line\r\n",
            b"Subject: bare\nX: lf\n\nbody\n",
            b" starts folded\r\nReceived: x\r\n\r\nb\r\n",
            b"",
            b"\r\n",
        ];
        let edit_sets: Vec<Vec<Edit>> = vec![
            vec![add("X-One", "1")],
            vec![add("X-One", "1"), add("X-Two", &"word ".repeat(40))],
            vec![add("Bad Name", "v"), add("X-Ok", "v"), add("X-Evil", "a\r\nb")],
            vec![add("Bad Name", "v")],
        ];
        for m in messages {
            for edits in &edit_sets {
                let quick = apply(m, edits, 1000);
                let general = apply_fields(m, edits, 1000);
                assert_eq!(quick.data, general.data, "{:?} {edits:?}", String::from_utf8_lossy(m));
                let refused = |a: &Applied| a.refused.iter().map(|(i, _)| *i).collect::<Vec<_>>();
                assert_eq!(refused(&quick), refused(&general), "{:?}", String::from_utf8_lossy(m));
            }
        }
    }

    #[test]
    fn added_fields_go_on_top_in_order() {
        let add = |n: &str| Edit::AddHeader { name: n.into(), value: "1".into() };
        let e = apply(MSG, &[add("X-A"), add("X-B"), Edit::RemoveHeader { name: "x-a".into() }, add("X-C")], 1000);
        let t = String::from_utf8(e.data.unwrap()).unwrap();
        assert!(t.starts_with("Received: x\r\nX-B: 1\r\nX-C: 1\r\nSubject: one\r\n"), "{t}");
        let e = apply(b"Received: by us\r\nReceived: by them\r\n\r\nb\r\n", &[add("X-A")], 1000);
        assert!(e.data.unwrap().starts_with(b"Received: by us\r\nX-A: 1\r\nReceived: by them\r\n"));
        // A message without header fields, an added field removed again: nothing to index past.
        let e = apply(
            b"\r\nbody\r\n",
            &[
                add("X-A"),
                Edit::RemoveHeader { name: "X-A".into() },
                add("X-B"),
                Edit::ChangeHeader { name: "X-B".into(), index: 0, value: String::new() },
                add("X-C"),
            ],
            1000,
        );
        assert_eq!(e.data.unwrap(), b"X-C: 1\r\n\r\nbody\r\n");
    }

    #[test]
    fn body_is_made_canonical() {
        let e = apply(MSG, &[Edit::ReplaceBody(b"new\nbody".to_vec())], 1000);
        assert!(String::from_utf8(e.data.unwrap()).unwrap().ends_with("X-A: 2\r\n\r\nnew\r\nbody\r\n"));
    }
}
