//! Sans-IO SMTP for mailgate.
//!
//! This crate owns the wire format of SMTP and nothing else: splitting the input into lines with
//! strict `<CRLF>` framing (a bare CR or LF is an error, never a line end), parsing commands and
//! their parameters, receiving message content for `DATA` (dot-unstuffing, only `<CRLF>.<CRLF>`
//! ends it) and `BDAT`, building replies with RFC 3463 enhanced codes, and parsing the replies
//! of a remote server for the outbound client.
//!
//! It must not know about sockets, tokio, TLS, plugins, the spool or the configuration file: every
//! function here takes bytes and returns values, so it can be fuzzed and tested in isolation.

pub mod address;
pub mod command;
pub mod content;
pub mod ehlo;
pub mod line;
pub mod reply;

pub use address::{Address, AddressError};
pub use command::{xtext_decode, xtext_encode, Body, Command, MailParams, Notify, RcptParams, Ret};
pub use content::{ContentError, ContentReceiver, Progress};
pub use ehlo::Extensions;
pub use line::{LineError, LineEvent, LineReader};
pub use reply::{iana_cipher_name, push_decimal, Enhanced, Reply, ReplyParser};

/// Appends `ip` as text (`192.0.2.1`, `2001:db8::1`) to `out`. An IPv4 address is written
/// octet by octet: every message's `Received:` field and envelope carry its client's address,
/// and `Display` with its padding support took ~1 000 instructions for one.
pub fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// `ip` as text (see [`push_ip`]).
pub fn ip_text(ip: std::net::IpAddr) -> String {
    let mut s = String::with_capacity(15);
    push_ip(&mut s, ip);
    s
}

#[cfg(test)]
mod ip_tests {
    #[test]
    fn ip_text_is_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "192.0.2.1",
            "10.100.9.255",
            "255.255.255.255",
            "::1",
            "2001:db8::1",
            "::ffff:192.0.2.1",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(super::ip_text(ip), ip.to_string());
        }
        for n in 0..=255u8 {
            let ip = std::net::IpAddr::from([n, n.wrapping_mul(7), 0, n / 3]);
            assert_eq!(super::ip_text(ip), ip.to_string());
        }
    }
}
