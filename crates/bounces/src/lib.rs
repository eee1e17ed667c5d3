//! Bounces that come back later, for messages sent through the API.
//!
//! This crate owns three things: the VERP return path such a message leaves with
//! (`bounces+<queue id>-<tag>@<bounce domain>`, the tag an HMAC so that nobody can forge a
//! bounce for a message they did not see), reading the RFC 3464 report a remote system sends
//! back to it, and the per-key suppression list of recipients that bounced for good. It must
//! not know SMTP sessions, the queue, events or HTTP: the gateway asks it whether an address is
//! ours, what a report says, and whether a recipient is suppressed.

pub mod report;
pub mod suppress;
pub mod verp;

pub use report::{parse_report, Report, ReportedRcpt};
pub use suppress::{Suppressed, SuppressionError, Suppressions};
pub use verp::Verp;
