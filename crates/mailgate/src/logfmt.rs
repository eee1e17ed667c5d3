//! The text log's fields: control characters in values escaped (`\n`, `\r`, `\u{1b}`…). The
//! values come from clients and plugins — an AUTH user name, a HELO name, an address, a
//! plugin's log line — and written as they are, a newline would start a line of the
//! client's making that reads like one of ours (a log watcher such as fail2ban would act on
//! it: a good client banned, a bad one hidden), and an escape sequence would drive the
//! operator's terminal. The JSON log escapes them already.

use std::borrow::Cow;

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// `value` with every control character (C0 but tab, DEL, C1) escaped as Rust writes it.
pub(crate) fn escape_controls(value: &str) -> Cow<'_, str> {
    let control = |c: char| c.is_control() && c != '\t';
    if !value.chars().any(control) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if control(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The text log's field formatter: `name=value` as tracing's default writes them (the
/// message bare), each value with its controls escaped.
pub(crate) fn text_fields() -> impl for<'w> FormatFields<'w> + 'static {
    tracing_subscriber::fmt::format::debug_fn(|w: &mut Writer<'_>, field: &tracing::field::Field, value| {
        let text = format!("{value:?}");
        let text = escape_controls(&text);
        match field.name() {
            "message" => w.write_str(&text),
            name => write!(w, "{name}={text}"),
        }
    })
    .delimited(" ")
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn every_control_but_tab_is_escaped() {
        for c in (0u32..0x110000).filter_map(char::from_u32) {
            let s = format!("a{c}b");
            let out = escape_controls(&s);
            if c.is_control() && c != '\t' {
                assert!(!out.contains(c), "{c:?}");
                assert!(out.starts_with("a\\") && out.ends_with('b'), "{c:?}: {out}");
            } else {
                assert_eq!(out, s, "{c:?}");
            }
        }
        assert_eq!(escape_controls("alice\r\n2026 INFO forged"), "alice\\r\\n2026 INFO forged");
        assert_eq!(escape_controls("\u{1b}[31mred"), "\\u{1b}[31mred");
    }
}
