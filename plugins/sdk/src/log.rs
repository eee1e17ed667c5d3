//! Log lines in the gateway's log, tagged by the host with plugin name, stage and session.
//!
//! ```ignore
//! use mailgate_plugin_sdk::log;
//! log::info!("greylisted {} for {}s", rcpt, secs);
//! log::log(log::Level::Warn, "plain text, no formatting");
//! ```

pub use crate::bindings::mailgate::plugin::log::{Level, log};

/// Formats like `format!` and logs at the given [`Level`] variant name; used by the
/// level macros below.
#[doc(hidden)]
#[macro_export]
macro_rules! __mailgate_log {
    ($level:ident, $($arg:tt)+) => {
        $crate::log::log($crate::log::Level::$level, &::std::format!($($arg)+))
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mailgate_trace { ($($arg:tt)+) => { $crate::__mailgate_log!(Trace, $($arg)+) }; }
#[doc(hidden)]
#[macro_export]
macro_rules! __mailgate_debug { ($($arg:tt)+) => { $crate::__mailgate_log!(Debug, $($arg)+) }; }
#[doc(hidden)]
#[macro_export]
macro_rules! __mailgate_info { ($($arg:tt)+) => { $crate::__mailgate_log!(Info, $($arg)+) }; }
#[doc(hidden)]
#[macro_export]
macro_rules! __mailgate_warn { ($($arg:tt)+) => { $crate::__mailgate_log!(Warn, $($arg)+) }; }
#[doc(hidden)]
#[macro_export]
macro_rules! __mailgate_error { ($($arg:tt)+) => { $crate::__mailgate_log!(Error, $($arg)+) }; }

/// `log::debug!("fmt", args..)`: log at debug level.
pub use crate::__mailgate_debug as debug;
/// `log::error!("fmt", args..)`: log at error level.
pub use crate::__mailgate_error as error;
/// `log::info!("fmt", args..)`: log at info level.
pub use crate::__mailgate_info as info;
/// `log::trace!("fmt", args..)`: log at trace level.
pub use crate::__mailgate_trace as trace;
/// `log::warn!("fmt", args..)`: log at warn level.
pub use crate::__mailgate_warn as warn;
