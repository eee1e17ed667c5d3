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
pub use reply::{iana_cipher_name, Enhanced, Reply, ReplyParser};
