use super::*;
use crate::ParsedMessage;
use std::sync::Arc;

fn limits() -> MessageLimits {
    MessageLimits::default()
}

/// `levels` embedded messages, each of `kind` (`message/rfc822` or `message/global`).
fn nested_messages(levels: usize, kind: &str) -> Vec<u8> {
    let mut m = b"From: a@example.test\r\nSubject: outer\r\n".to_vec();
    for _ in 0..levels {
        m.extend_from_slice(format!("Content-Type: {kind}\r\n\r\n").as_bytes());
    }
    m.extend_from_slice(b"Subject: inner\r\n\r\nhello\r\n");
    m
}

/// `levels` multiparts, each inside the previous one.
fn nested_multiparts(levels: usize) -> Vec<u8> {
    let mut m = b"From: a@example.test\r\nSubject: outer\r\n".to_vec();
    for i in 0..levels {
        m.extend_from_slice(format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n").as_bytes());
    }
    m.extend_from_slice(b"Content-Type: text/plain\r\n\r\nhello\r\n");
    for i in (0..levels).rev() {
        m.extend_from_slice(format!("--b{i}--\r\n").as_bytes());
    }
    m
}

/// Alternating: a multipart holding an embedded message holding a multipart…
fn nested_mix(levels: usize) -> Vec<u8> {
    let mut m = b"From: a@example.test\r\nSubject: outer\r\n".to_vec();
    for i in 0..levels {
        if i % 2 == 0 {
            m.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=\"m{i}\"\r\n\r\n--m{i}\r\n").as_bytes(),
            );
        } else {
            m.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
        }
    }
    m.extend_from_slice(b"Content-Type: text/plain\r\n\r\nhello\r\n");
    for i in (0..levels).rev().filter(|i| i % 2 == 0) {
        m.extend_from_slice(format!("--m{i}--\r\n").as_bytes());
    }
    m
}

fn base64(data: &[u8]) -> Vec<u8> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    for (i, c) in data.chunks(3).enumerate() {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for j in 0..4 {
            out.push(if j <= c.len() { T[(n >> (18 - 6 * j) & 63) as usize] } else { b'=' });
        }
        if i % 19 == 18 {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// An embedded `message/global` in base64 whose content is `inner`.
fn encoded(inner: &[u8]) -> Vec<u8> {
    let mut m =
        b"From: a@example.test\r\nSubject: outer\r\nContent-Type: multipart/mixed; boundary=\"x\"\r\n\r\n--x\r\n\
        Content-Type: message/global\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            .to_vec();
    m.extend_from_slice(&base64(inner));
    m.extend_from_slice(b"\r\n--x--\r\n");
    m
}

/// Runs `f` on a thread with a small stack (a wasm fiber's size): what overflowed before.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(256 << 10).spawn(f).unwrap().join().expect("no stack overflow")
}

#[test]
fn plain_and_ordinary_messages_pass() {
    let s = inspect(b"From: a@example.test\r\nSubject: hi\r\n\r\nhello\r\n", &limits()).unwrap();
    assert_eq!((s.depth, s.parts, s.header_fields), (0, 1, 2));
    let m = b"From: a@example.test\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
        Content-Type: text/plain\r\n\r\ntext\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n\
        Subject: forwarded\r\n\r\nold\r\n--b\r\nContent-Type: application/pdf\r\n\
        Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n";
    let s = inspect(m, &limits()).unwrap();
    assert_eq!(s.depth, 2, "{s:?}");
    assert_eq!(s.parts, 5, "{s:?}");
}

#[test]
fn the_limit_is_exact() {
    let l = limits();
    for (name, make) in [
        ("rfc822", (|n| nested_messages(n, "message/rfc822")) as fn(usize) -> Vec<u8>),
        ("global", |n| nested_messages(n, "message/global")),
        ("multipart", nested_multiparts),
        ("mix", nested_mix),
    ] {
        assert_eq!(inspect(&make(50), &l).map(|s| s.depth), Ok(50), "{name} at 50");
        assert_eq!(inspect(&make(51), &l), Err(MessageError::TooDeep { limit: 50 }), "{name} at 51");
    }
}

#[test]
fn every_depth_up_to_100000_is_refused_on_a_small_stack() {
    for n in [51, 100, 1_000, 2_000, 10_000, 100_000] {
        for msg in [
            nested_messages(n, "message/rfc822"),
            nested_messages(n, "message/global"),
            nested_multiparts(n),
            nested_mix(n),
        ] {
            let got = on_small_stack(move || inspect(&msg, &MessageLimits::default()));
            assert!(
                matches!(got, Err(MessageError::TooDeep { .. }) | Err(MessageError::TooManyParts { .. })),
                "{n}: {got:?}"
            );
        }
    }
}

#[test]
fn encoded_embedded_messages_are_measured_inside() {
    // mail-parser decodes these and recursed once per level inside: 10,000 levels aborted it.
    for n in [45, 100, 10_000] {
        let msg = encoded(&nested_messages(n, "message/rfc822"));
        let got = on_small_stack(move || inspect(&msg, &MessageLimits::default()));
        if n == 45 {
            // 2 levels outside (multipart, the encoded message) + 45 inside.
            assert_eq!(got.map(|s| s.depth), Ok(47));
        } else {
            assert_eq!(got, Err(MessageError::TooDeep { limit: 50 }), "{n}");
        }
    }
    // Quoted-printable the same way.
    let inner = nested_messages(60, "message/rfc822");
    let mut m =
        b"From: a@example.test\r\nContent-Type: message/global\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            .to_vec();
    for line in inner.split(|b| *b == b'\n') {
        m.extend_from_slice(&line[..line.len().saturating_sub(1)]);
        m.extend_from_slice(b"=0D=0A=\r\n");
    }
    assert_eq!(inspect(&m, &limits()), Err(MessageError::TooDeep { limit: 50 }));
}

#[test]
fn parts_and_header_limits() {
    let mut m = b"From: a@example.test\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n".to_vec();
    for _ in 0..5_000 {
        m.extend_from_slice(b"--b\r\n\r\nx\r\n");
    }
    m.extend_from_slice(b"--b--\r\n");
    assert_eq!(inspect(&m, &limits()), Err(MessageError::TooManyParts { limit: 5000 }));
    // A million empty parts: refused before the parser allocates them.
    let mut m = b"From: a@example.test\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n".to_vec();
    m.extend(std::iter::repeat_n(&b"--b\r\n\r\n"[..], 1_000_000).flatten());
    assert_eq!(inspect(&m, &limits()), Err(MessageError::TooManyParts { limit: 5000 }));

    let mut h: Vec<u8> = (0..1001).flat_map(|i| format!("X-F{i}: v\r\n").into_bytes()).collect();
    h.extend_from_slice(b"\r\nbody\r\n");
    assert_eq!(inspect(&h, &limits()), Err(MessageError::TooManyHeaderFields { limit: 1000 }));
    let h = [&b"Subject: "[..], &vec![b'x'; 600 << 10], b"\r\n\r\nbody\r\n"].concat();
    assert_eq!(inspect(&h, &limits()), Err(MessageError::HeaderTooBig { limit: 512 << 10 }));
    // Header-like lines anywhere (each becomes a parsed field) are capped too.
    let mut b = b"From: a@example.test\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n".to_vec();
    b.extend(std::iter::repeat_n(&b"a:\r\n"[..], 200_000).flatten());
    assert!(matches!(inspect(&b, &limits()), Err(MessageError::TooManyHeaderFields { .. })));
    assert_eq!(
        MessageError::TooDeep { limit: 50 }.reply().to_string(),
        "554 5.6.0 Message refused: MIME structure nested deeper than 50 levels"
    );
}

#[test]
fn a_checked_message_parses_for_plugins_on_a_small_stack() {
    let msg = nested_mix(50);
    assert!(inspect(&msg, &limits()).is_ok());
    let (subject, fields) = on_small_stack(move || {
        let p = ParsedMessage::new(Arc::new(msg));
        (p.subject().map(str::to_string), p.header_values(None).len())
    });
    assert_eq!((subject.as_deref(), fields), (Some("outer"), 3));
}

#[test]
fn a_deep_parse_result_is_dropped_without_recursion() {
    let msg: &'static [u8] = Box::leak(nested_messages(100_000, "message/rfc822").into_boxed_slice());
    let parser = MessageParser::new().with_mime_headers().ignore_header(HeaderName::ContentTransferEncoding);
    // Dropping 100,000 nested messages the ordinary way needs megabytes of stack.
    let parsed: Message<'static> = parser.parse(msg).unwrap();
    on_small_stack(move || dismantle(parsed));
}

/// The full parse's answer, whatever the fast path would say.
fn parsed(raw: &[u8]) -> Result<Structure, MessageError> {
    let lines = scan_lines(raw, &limits())?;
    let s = Structure { header_fields: lines.header_fields, header_size: lines.header_size, ..Default::default() };
    parse_and_measure(raw, &limits(), s)
}

#[test]
fn one_leaf_content_type_skips_the_parse_and_agrees_with_it() {
    let leaf = |ct: &str| format!("From: a@example.test\r\n{ct}\r\nSubject: s\r\n\r\nhello\r\n--b\r\n").into_bytes();
    // The shape the sending API builds, and others that cannot hold a part: no parse.
    for ct in [
        "Content-Type: text/plain; charset=\"utf-8\"",
        "content-type:TEXT/HTML",
        "Content-Type: application/pdf;\r\n\tname=\"a.pdf\"",
        "Content-Type : image/png",
    ] {
        let m = leaf(ct);
        assert!(scan_lines(&m, &limits()).unwrap().single_leaf, "{ct}");
        assert_eq!(inspect(&m, &limits()), parsed(&m), "{ct}");
        assert_eq!(inspect(&m, &limits()).unwrap().parts, 1, "{ct}");
    }
    // Anything that could open a part, in any case, on any line of the field, behind a
    // comment or an encoded word, twice, or only in the body: the parse decides.
    let multi = |ct: &str| {
        format!(
            "From: a@example.test\r\n{ct}\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b\r\n\r\ny\r\n--b--\r\n"
        )
        .into_bytes()
    };
    for m in [
        multi("Content-Type: multipart/mixed; boundary=b"),
        multi("Content-Type: MULTIPART/Mixed;\r\n boundary=b"),
        multi("Content-Type:\r\n multipart/mixed;\r\n\tboundary=b"),
        leaf("Content-Type: message/rfc822"),
        leaf("Content-Type: (c) text/plain"),
        leaf("Content-Type: =?utf-8?q?x?= text/plain"),
        leaf("Content-Type: text/plain\r\nContent-Type: multipart/mixed; boundary=b"),
        b"From: a@example.test\r\n\r\nContent-Type: multipart/mixed; boundary=b\r\n".to_vec(),
        b"From: a@example.test\r\nContent-Type: multipart/mixed; boundary=b".to_vec(),
    ] {
        assert!(!scan_lines(&m, &limits()).unwrap().single_leaf, "{}", String::from_utf8_lossy(&m));
        assert_eq!(inspect(&m, &limits()), parsed(&m), "{}", String::from_utf8_lossy(&m));
    }
    let m = multi("Content-Type: multipart/mixed;\r\n boundary=b");
    assert_eq!(inspect(&m, &limits()).unwrap().parts, 3, "a folded multipart is still measured");
    // A message that is all header, a leaf Content-Type last.
    let m = b"From: a@example.test\r\nContent-Type: text/plain".to_vec();
    assert!(scan_lines(&m, &limits()).unwrap().single_leaf);
    assert_eq!(inspect(&m, &limits()), parsed(&m));
}

/// The colon-first field test agrees with the definition (a name of printable ASCII without
/// spaces or colons, then a colon) for every line of up to five octets from the octets that
/// matter.
#[test]
fn looks_like_field_agrees_with_the_definition() {
    let definition = |line: &[u8]| {
        let name_len = line.iter().take_while(|&&b| b > b' ' && b < 127 && b != b':').count();
        name_len > 0 && line.get(name_len) == Some(&b':')
    };
    let alphabet = [b'a', b' ', b':', b'\t', 0x7f, 0x80, b'-', 0];
    let mut line = vec![];
    for len in 0..=5u32 {
        for n in 0..alphabet.len().pow(len) {
            line.clear();
            let mut k = n;
            for _ in 0..len {
                line.push(alphabet[k % alphabet.len()]);
                k /= alphabet.len();
            }
            assert_eq!(super::looks_like_field(&line), definition(&line), "{line:?}");
        }
    }
}

/// The one pass answers as the three searches did (any case, anywhere, at the ends, cut
/// short), over every field built from pieces that matter and pieces that do not.
#[test]
fn may_contain_is_the_three_searches() {
    let slow = |field: &[u8]| {
        let has = |needle: &[u8]| field.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle));
        has(b"multipart") || has(b"message") || field.iter().any(|b| matches!(b, b'(' | b'\\' | 0x80..)) || has(b"=?")
    };
    let pieces: [&[u8]; 16] = [
        b"Content-Type: ",
        b"text/plain",
        b"MULTIPART",
        b"multipar",
        b"Message",
        b"messag",
        b"m",
        b"M",
        b"=",
        b"?",
        b"=?",
        b"(",
        b"\\",
        "é".as_bytes(),
        b"; charset=\"x\"",
        b"\r\n\t",
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut yes = 0;
    for _ in 0..50_000 {
        let mut field = vec![];
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        for k in 0..(seed % 6) {
            field.extend_from_slice(pieces[((seed >> (8 * k + 8)) % 16) as usize]);
        }
        assert_eq!(may_contain(&field), slow(&field), "{:?}", String::from_utf8_lossy(&field));
        yes += usize::from(slow(&field));
    }
    assert!((10_000..40_000).contains(&yes), "{yes} of 50 000 may contain");
}
