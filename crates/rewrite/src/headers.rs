//! Canonical rewriting in header fields: the addresses in From, Sender, Reply-To (the sender's
//! map) and To, Cc (the recipients' map). Only address tokens change; display names, quoted
//! strings and comments are passed over untouched.

/// A map from an address to its rewritten form (`None`: unchanged).
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Rewrites the fields in `data`'s header section; `None` when nothing changed.
pub fn rewrite(data: &[u8], sender: Lookup<'_>, recipient: Lookup<'_>) -> Option<Vec<u8>> {
    let end = header_end(data);
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut changed = false;
    let mut i = 0;
    while i < end {
        // One field: its first line and every continuation line.
        let mut j = next_line(data, i, end);
        while j < end && matches!(data[j], b' ' | b'\t') {
            j = next_line(data, j, end);
        }
        let field = &data[i..j];
        let map: Option<Lookup<'_>> = match field_name(field) {
            Some(n) if ["from", "sender", "reply-to"].iter().any(|f| n.eq_ignore_ascii_case(f.as_bytes())) => {
                Some(sender)
            }
            Some(n) if ["to", "cc"].iter().any(|f| n.eq_ignore_ascii_case(f.as_bytes())) => Some(recipient),
            _ => None,
        };
        match map.and_then(|m| rewrite_field(field, m)) {
            Some(new) => {
                out.extend_from_slice(&new);
                changed = true;
            }
            None => out.extend_from_slice(field),
        }
        i = j;
    }
    out.extend_from_slice(&data[end..]);
    changed.then_some(out)
}

fn next_line(data: &[u8], from: usize, end: usize) -> usize {
    data[from..end].iter().position(|b| *b == b'\n').map_or(end, |p| from + p + 1)
}

fn header_end(data: &[u8]) -> usize {
    if data.starts_with(b"\r\n") {
        return 0;
    }
    data.windows(4).position(|w| w == b"\r\n\r\n").map_or(data.len(), |p| p + 2)
}

fn field_name(field: &[u8]) -> Option<&[u8]> {
    let colon = field.iter().position(|b| *b == b':')?;
    Some(field[..colon].trim_ascii_end())
}

/// The field with each address token the map knows replaced; `None` when none was.
fn rewrite_field(field: &[u8], map: Lookup<'_>) -> Option<Vec<u8>> {
    let colon = field.iter().position(|b| *b == b':')?;
    let mut out = field[..=colon].to_vec();
    let mut changed = false;
    let v = &field[colon + 1..];
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'"' => {
                let j = skip_quoted(v, i);
                out.extend_from_slice(&v[i..j]);
                i = j;
            }
            b'(' => {
                let j = skip_comment(v, i);
                out.extend_from_slice(&v[i..j]);
                i = j;
            }
            c if is_delimiter(c) => {
                out.push(c);
                i += 1;
            }
            _ => {
                let j =
                    v[i..].iter().position(|c| is_delimiter(*c) || *c == b'"' || *c == b'(').map_or(v.len(), |p| i + p);
                let token = &v[i..j];
                let new = std::str::from_utf8(token).ok().filter(|t| t.contains('@')).and_then(map);
                match new {
                    Some(n) => {
                        out.extend_from_slice(n.as_bytes());
                        changed = true;
                    }
                    None => out.extend_from_slice(token),
                }
                i = j;
            }
        }
    }
    changed.then_some(out)
}

fn is_delimiter(c: u8) -> bool {
    c.is_ascii_whitespace() || b"<>,;:[]".contains(&c)
}

fn skip_quoted(v: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < v.len() {
        match v[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    v.len()
}

/// Past a comment, nested ones included (RFC 5322 §3.2.2); depth is bounded by the field.
fn skip_comment(v: &[u8], start: usize) -> usize {
    let (mut depth, mut i) = (0usize, start);
    while i < v.len() {
        match v[i] {
            b'\\' => i += 1,
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    v.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_address_tokens_only() {
        let sender = |a: &str| (a.eq_ignore_ascii_case("root@gw.test")).then(|| "ops@corp.test".to_string());
        let rcpt = |a: &str| (a == "old@corp.test").then(|| "new@corp.test".to_string());
        let msg = b"From: \"root@gw.test (really)\" (root@gw.test) <ROOT@gw.test>\r\nTo: a@x.test,\r\n old@corp.test\r\nSubject: root@gw.test\r\nX-Other: old@corp.test\r\n\r\nTo: old@corp.test\r\n";
        let out = rewrite(msg, &sender, &rcpt).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "From: \"root@gw.test (really)\" (root@gw.test) <ops@corp.test>\r\nTo: a@x.test,\r\n new@corp.test\r\nSubject: root@gw.test\r\nX-Other: old@corp.test\r\n\r\nTo: old@corp.test\r\n"
        );
        assert!(rewrite(b"From: other@x.test\r\n\r\n", &sender, &rcpt).is_none());
        // Unterminated quotes and comments end at the field's end, never beyond.
        assert!(rewrite(b"From: \"open <root@gw.test>\r\nTo: (open old@corp.test\r\n\r\n", &sender, &rcpt).is_none());
    }
}
