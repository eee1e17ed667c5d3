//! Applying plugin modifications to a message before it is spooled. Header edits work on the
//! raw header section (folded fields stay whole); every value is checked so a plugin cannot
//! inject a line end or a malformed field. Invalid modifications are dropped and logged.

use crate::bindings::types::{Modification, Route};

/// The result of applying a chain's modifications.
#[derive(Debug, Default)]
pub struct Edits {
    /// The new message, when header or body edits were made.
    pub data: Option<Vec<u8>>,
    /// New reverse path (`Some("")` is the null sender).
    pub sender: Option<String>,
    pub add_rcpts: Vec<String>,
    pub remove_rcpts: Vec<String>,
    /// A route for the whole message, in the queue's text form.
    pub route: Option<String>,
    /// Modifications refused, with the reason (for the log).
    pub refused: Vec<String>,
}

/// The route in the text form the spool stores and the queue reads:
/// `mx:DOMAIN`, `smarthost:HOST:PORT`, `maildir:PATH`, `discard`, `hold`, `reject:CODE ENH TEXT`.
pub fn route_text(r: &Route) -> String {
    match r {
        Route::Mx(d) => format!("mx:{d}"),
        Route::Smarthost((h, p)) => format!("smarthost:{h}:{p}"),
        Route::Maildir(p) => format!("maildir:{p}"),
        Route::Discard => "discard".into(),
        Route::Hold => "hold".into(),
        Route::Reject(r) => format!(
            "reject:{} {} {}",
            r.code,
            if r.enhanced.is_empty() { "5.0.0" } else { &r.enhanced },
            r.text.replace(['\r', '\n'], " ")
        ),
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 76 && n.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

fn valid_value(v: &str) -> bool {
    v.len() <= 8000 && !v.contains(['\r', '\n', '\0'])
}

fn valid_address(a: &str) -> bool {
    a.is_empty() || mailgate_smtp::Address::parse_mailbox(a).is_ok()
}

/// One header field: its name and its whole raw text (all folded lines, with CRLFs).
struct Field {
    name: String,
    raw: Vec<u8>,
}

fn split(data: &[u8]) -> (Vec<Field>, &[u8]) {
    let end = data.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 2).unwrap_or(data.len());
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
fn fold(line: &str) -> String {
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

/// Applies `mods` in order to `data` (the message as it will be spooled).
pub fn apply(data: &[u8], mods: &[Modification]) -> Edits {
    let mut e = Edits::default();
    if mods.is_empty() {
        return e;
    }
    let (mut fields, body) = split(data);
    let mut body = body.to_vec();
    let mut changed = false;
    for m in mods {
        match m {
            Modification::AddHeader((n, v)) if valid_name(n) && valid_value(v) => {
                fields.push(field(n, v));
                changed = true;
            }
            Modification::RemoveHeader(n) => {
                let before = fields.len();
                fields.retain(|f| !f.name.eq_ignore_ascii_case(n));
                changed |= fields.len() != before;
            }
            Modification::ChangeHeader((n, idx, v)) if valid_name(n) && valid_value(v) => {
                let pos = fields
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.name.eq_ignore_ascii_case(n))
                    .map(|(i, _)| i)
                    .nth(*idx as usize);
                match (pos, v.is_empty()) {
                    (Some(i), true) => {
                        fields.remove(i);
                    }
                    (Some(i), false) => fields[i] = field(&fields[i].name.clone(), v),
                    (None, false) => fields.push(field(n, v)),
                    (None, true) => {}
                }
                changed = true;
            }
            Modification::AddRecipient(a) if valid_address(a) && !a.is_empty() => e.add_rcpts.push(a.clone()),
            Modification::RemoveRecipient(a) => e.remove_rcpts.push(a.clone()),
            Modification::ChangeSender(a) if valid_address(a) => e.sender = Some(a.clone()),
            Modification::ReplaceBody(b) => {
                // Canonical CRLF line ends whatever the plugin gave, after the empty line.
                body = b"\r\n".to_vec();
                body.extend_from_slice(&mailgate_smtp::content::to_crlf(b));
                changed = true;
            }
            Modification::SetRoute(r) => e.route = Some(route_text(r)),
            other => e.refused.push(format!("{other:?}")),
        }
    }
    if changed {
        let mut out = Vec::with_capacity(data.len() + 256);
        for f in &fields {
            out.extend_from_slice(&f.raw);
        }
        if !body.starts_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&body);
        e.data = Some(out);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Received: x\r\nSubject: one\r\n two\r\nX-A: 1\r\nX-A: 2\r\n\r\nbody\r\n";

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
                Modification::AddHeader(("X-New".into(), "yes".into())),
                Modification::ChangeHeader(("x-a".into(), 1, "two".into())),
                Modification::RemoveHeader("subject".into()),
            ],
        );
        assert_eq!(
            String::from_utf8(e.data.unwrap()).unwrap(),
            "Received: x\r\nX-A: 1\r\nX-A: two\r\nX-New: yes\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn injection_is_refused() {
        let e = apply(
            MSG,
            &[
                Modification::AddHeader(("X-Evil".into(), "a\r\nBcc: victim@x".into())),
                Modification::AddHeader(("Bad Name".into(), "v".into())),
            ],
        );
        assert!(e.data.is_none());
        assert_eq!(e.refused.len(), 2);
    }

    #[test]
    fn body_and_envelope() {
        let e = apply(
            MSG,
            &[
                Modification::ReplaceBody(b"new\nbody".to_vec()),
                Modification::ChangeSender("".into()),
                Modification::AddRecipient("bcc@archive.test".into()),
                Modification::AddRecipient("not an address".into()),
                Modification::SetRoute(Route::Smarthost(("10.0.0.1".into(), 2525))),
            ],
        );
        assert!(String::from_utf8(e.data.unwrap()).unwrap().ends_with("X-A: 2\r\n\r\nnew\r\nbody\r\n"));
        assert_eq!(e.sender.as_deref(), Some(""));
        assert_eq!(e.add_rcpts, vec!["bcc@archive.test"]);
        assert_eq!(e.route.as_deref(), Some("smarthost:10.0.0.1:2525"));
        assert_eq!(e.refused.len(), 1);
    }
}
