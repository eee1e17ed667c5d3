//! A message's content, between "it has arrived" and "it is in the spool".
//!
//! This crate owns what the gateway knows about the bytes of a message: the structural check
//! that runs before anything parses it ([`inspect`]: MIME depth, part count, header size —
//! without recursion, so no input can overflow a stack), the parsed view plugins read through
//! the `message` resource ([`ParsedMessage`]), and the header/body edits plugins ask for
//! ([`edit::apply`]), 8-bit bodies re-encoded for a 7-bit next hop ([`to_seven_bit`]), and the
//! memory budget content in flight is counted against
//! ([`Budget`]). Everything here takes bytes and returns values, so the whole path can be
//! fuzzed (`fuzz/`).
//!
//! It must not know sessions, plugins, the spool or the network.

pub mod budget;
pub mod date;
pub mod downgrade;
pub mod edit;
pub mod fields;
pub mod parsed;
pub mod structure;

pub use budget::{Budget, Reservation};
pub use downgrade::{to_seven_bit, DowngradeError};
pub use edit::{apply, Applied, Edit, EditError};
pub use parsed::ParsedMessage;
pub use structure::{dismantle, inspect, MessageError, MessageLimits, Structure};

/// Where the first `CRLF CRLF` of `data` starts: the end of a header section. Every message
/// is asked this several times on its way (cleanup, edits, delivery); the searcher is built
/// once, where `memmem::find` built one at each call (~300 instructions).
pub fn blank_line(data: &[u8]) -> Option<usize> {
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    FINDER.find(data)
}
