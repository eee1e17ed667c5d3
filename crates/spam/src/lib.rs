//! The content classifier of mailgate's `spam` plugin: the tokenizer, the model file format
//! and the scoring (Robinson's per-token probabilities combined with Fisher's chi-square, as
//! in SpamBayes). Compiled natively for `mailgate spam train`/`eval` and to wasm32 for the
//! plugin, so both see a message through the very same tokens.
//!
//! It owns no I/O and knows nothing of SMTP, the plugin host or mail parsing: callers hand it
//! the decoded subject, a few header values and the text body (the host's `message` resource
//! gives exactly these), and look token counts up wherever the model lives (a host data
//! table for the plugin, a map for the trainer).

mod score;
mod tokens;

pub use score::{classify, tenths, Counts, Model, Verdict};
pub use tokens::{tokens, Input, HEADERS, MAX_TOKENS};

/// Model keys that are not tokens: how many spam and ham messages were trained.
pub const KEY_NSPAM: &str = "__nspam";
pub const KEY_NHAM: &str = "__nham";
