//! The whole message path a plugin can drive, on arbitrary bytes: the content as the DATA
//! receiver stores it, the structural check, every accessor of the WIT `message` resource,
//! header/body edits built from the input, the serialised result checked again, and the 7-bit
//! downgrade for a next hop without 8BITMIME. Nothing may panic, abort or overflow a stack;
//! edits never make canonical content non-canonical; a downgrade is 7-bit and canonical.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use mailgate_message::{apply, inspect, to_seven_bit, Edit, MessageLimits, ParsedMessage};
use mailgate_smtp::content::{ContentReceiver, Mode};

/// Small limits, so that the refusals are reached as well as the parse.
const SMALL: MessageLimits = MessageLimits { max_depth: 8, max_parts: 64, max_header_fields: 64, max_header_size: 4096 };

fn canonical(b: &[u8]) -> bool {
    b.iter().enumerate().all(|(i, &c)| match c {
        b'\n' => i > 0 && b[i - 1] == b'\r',
        b'\r' => b.get(i + 1) == Some(&b'\n'),
        _ => true,
    })
}

/// Every accessor the `message` resource offers.
fn read_all(raw: Vec<u8>) {
    let m = ParsedMessage::new(Arc::new(raw));
    let _ = m.subject();
    let _ = m.from_address();
    let _ = m.text_body();
    let _ = m.html_body();
    let all = m.header_values(None);
    for (name, _) in all.iter().take(4) {
        let _ = m.header(name);
        let _ = m.header_values(Some(name));
    }
    let _ = m.header("Content-Type");
    let n = m.raw().len();
    let _ = m.raw().get(n / 2..);
}

/// Edits taken from the input: a selector byte, then a name and a value cut from the data.
fn edits(data: &[u8]) -> Vec<Edit> {
    let text = String::from_utf8_lossy(data);
    let mut words = text.split(|c: char| c == '|');
    let mut out = vec![];
    for (i, sel) in data.iter().take(6).enumerate() {
        let name = words.next().unwrap_or("X-Fuzz").chars().take(80).collect::<String>();
        let value = words.next().unwrap_or("").chars().take(300).collect::<String>();
        out.push(match sel % 4 {
            0 => Edit::AddHeader { name, value },
            1 => Edit::RemoveHeader { name },
            2 => Edit::ChangeHeader { name, index: i as u32 % 3, value },
            _ => Edit::ReplaceBody(value.into_bytes()),
        });
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // As the session stores it: BDAT framing (any octets), CRLF-only, no NUL.
    let mut rx = ContentReceiver::new(Mode::Bdat, 1 << 20, 998);
    let mut stored = Vec::with_capacity(data.len());
    rx.feed(data, &mut stored);
    let refused = rx.finish_bdat(&mut stored).is_err();

    for raw in [data, &stored[..]] {
        let _ = inspect(raw, &SMALL);
        if inspect(raw, &MessageLimits::default()).is_ok() {
            read_all(raw.to_vec());
        }
    }
    if refused {
        return;
    }
    assert!(canonical(&stored));
    if let Ok(seven) = to_seven_bit(&stored) {
        assert!(seven.is_ascii(), "the downgrade left 8-bit octets");
        assert!(canonical(&seven), "the downgrade made the content non-canonical");
    }
    let applied = apply(&stored, &edits(data), 1 << 20);
    if let Some(out) = applied.data {
        assert!(canonical(&out), "an edit made the content non-canonical");
        if inspect(&out, &MessageLimits::default()).is_ok() {
            read_all(out);
        }
    }
});
