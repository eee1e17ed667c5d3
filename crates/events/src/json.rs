//! An event as one JSON line, written directly: the log writer appends every event of every
//! message, and serde_json's serializer (a call per field, its string escaper octet by octet)
//! took ~5 000 instructions for an event of a 1 KiB message. The output is serde_json's own,
//! octet for octet (compact, fields in declaration order, the same escapes): the tests compare
//! the two, and the log is read back with serde.

use crate::Event;

impl Event {
    /// Appends this event as compact JSON (no line end) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"seq\":");
        number(out, self.seq);
        out.extend_from_slice(b",\"id\":");
        string(out, &self.id);
        out.extend_from_slice(b",\"at\":");
        number(out, self.at);
        out.extend_from_slice(b",\"kind\":\"");
        out.extend_from_slice(self.kind.name().as_bytes());
        out.extend_from_slice(b"\",\"queue_id\":");
        string(out, &self.queue_id);
        if let Some(r) = &self.recipient {
            out.extend_from_slice(b",\"recipient\":");
            string(out, r);
        }
        out.extend_from_slice(b",\"sender\":");
        string(out, &self.sender);
        if let Some(n) = self.recipients {
            out.extend_from_slice(b",\"recipients\":");
            number(out, n as u64);
        }
        if let Some(s) = &self.source {
            out.extend_from_slice(b",\"source\":");
            string(out, s);
        }
        if let Some(k) = &self.api_key {
            out.extend_from_slice(b",\"api_key\":");
            string(out, k);
        }
        if !self.tags.is_empty() {
            out.extend_from_slice(b",\"tags\":[");
            for (i, t) in self.tags.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, t);
            }
            out.push(b']');
        }
        if !self.metadata.is_empty() {
            out.extend_from_slice(b",\"metadata\":{");
            for (i, (k, v)) in self.metadata.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, k);
                out.push(b':');
                string(out, v);
            }
            out.push(b'}');
        }
        if let Some(r) = &self.reply {
            out.extend_from_slice(b",\"reply\":");
            string(out, r);
        }
        if let Some(h) = &self.remote_host {
            out.extend_from_slice(b",\"remote_host\":");
            string(out, h);
        }
        if let Some(a) = self.attempt {
            out.extend_from_slice(b",\"attempt\":");
            number(out, u64::from(a));
        }
        if let Some(n) = self.next_attempt {
            out.extend_from_slice(b",\"next_attempt\":");
            number(out, n);
        }
        if let Some(c) = self.class {
            out.extend_from_slice(b",\"class\":\"");
            out.extend_from_slice(c.name().as_bytes());
            out.push(b'"');
        }
        if let Some(d) = &self.detail {
            out.extend_from_slice(b",\"detail\":");
            string(out, d);
        }
        out.push(b'}');
    }
}

fn number(out: &mut Vec<u8>, n: u64) {
    let mut digits = [b'0'; 20];
    let at = decimal(n, &mut digits);
    out.extend_from_slice(&digits[at..]);
}

/// Writes `n`'s decimal digits at the end of `digits`; returns where they start.
pub(crate) fn decimal(mut n: u64, digits: &mut [u8; 20]) -> usize {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return at;
        }
    }
}

/// Whether `b` must be escaped in a JSON string (RFC 8259 §7: the quote, the backslash and
/// the control characters; serde_json escapes exactly these).
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// `s` as a JSON string: runs that need no escape are copied whole, tested 16 octets at a
/// time without a branch per octet.
fn string(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.push(b'"');
    let mut start = 0;
    let mut at = 0;
    while at < b.len() {
        if let Some(block) = b.get(at..at + 16) {
            if !block.iter().fold(false, |any, &c| any | needs_escape(c)) {
                at += 16;
                continue;
            }
        }
        let c = b[at];
        if !needs_escape(c) {
            at += 1;
            continue;
        }
        out.extend_from_slice(&b[start..at]);
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 15)]);
            }
        }
        at += 1;
        start = at;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use crate::{BounceClass, Event, Kind};

    fn same(e: &Event) {
        let mut mine = Vec::new();
        e.write_json(&mut mine);
        let theirs = serde_json::to_vec(e).unwrap();
        assert_eq!(String::from_utf8_lossy(&mine), String::from_utf8_lossy(&theirs));
        assert_eq!(&serde_json::from_slice::<Event>(&mine).unwrap(), e);
    }

    fn bare(kind: Kind) -> Event {
        Event { at: 0, ..Event::new(kind, "", "", None) }
    }

    #[test]
    fn every_field_and_every_octet_as_serde_json_writes_them() {
        // Every octet a string can hold below 0x80, every escape, multi-octet characters
        // (U+2028 and U+FEFF are not escaped by JSON), at every offset from a 16-octet block.
        let mut odd: String = (0u8..0x80).map(char::from).collect();
        odd.push_str("é€😀\u{2028}\u{feff}\u{7f}\"\\");
        let mut texts: Vec<String> = vec![String::new(), "plain".into(), odd.clone()];
        for shift in 0..20 {
            texts.push(format!("{}{}", "x".repeat(shift), odd));
            texts.push(format!("{}\n{}", "y".repeat(shift), "z".repeat(40)));
        }
        let kinds = [
            Kind::Received,
            Kind::Rejected,
            Kind::Delivered,
            Kind::Deferred,
            Kind::Bounced,
            Kind::Expired,
            Kind::DelayNotice,
            Kind::Quarantined,
            Kind::Released,
            Kind::Removed,
        ];
        let classes = [
            BounceClass::InvalidRecipient,
            BounceClass::BadDomain,
            BounceClass::MailboxFull,
            BounceClass::PolicyBlock,
            BounceClass::TooLarge,
            BounceClass::AuthFailure,
            BounceClass::TlsFailure,
            BounceClass::ConnectionFailure,
            BounceClass::Expired,
            BounceClass::Other,
        ];
        for kind in kinds {
            same(&bare(kind));
        }
        for (i, t) in texts.iter().enumerate() {
            let mut e = bare(kinds[i % kinds.len()]);
            e.seq = u64::MAX - i as u64;
            e.id = format!("ev{i:012}");
            e.at = 1_700_000_000_000 + i as u64;
            e.queue_id = t.clone();
            e.sender = t.clone();
            e.recipient = Some(t.clone());
            e.recipients = Some(i);
            e.source = Some("api".into());
            e.api_key = Some(t.clone());
            e.tags = vec![t.clone(), "b".into()];
            e.metadata = [(t.clone(), t.clone()), ("k".into(), String::new())].into_iter().collect();
            e.reply = Some(t.clone());
            e.remote_host = Some(t.clone());
            e.attempt = Some(u32::MAX - i as u32);
            e.next_attempt = Some(i as u64);
            e.class = Some(classes[i % classes.len()]);
            e.detail = Some(t.clone());
            same(&e);
            // And with each optional field left out in turn.
            e.recipient = None;
            same(&e);
            e.tags.clear();
            e.metadata.clear();
            same(&e);
            e.recipients = None;
            e.source = None;
            e.api_key = None;
            e.reply = None;
            same(&e);
            e.remote_host = None;
            e.attempt = None;
            e.next_attempt = None;
            e.class = None;
            e.detail = None;
            same(&e);
        }
    }
}
