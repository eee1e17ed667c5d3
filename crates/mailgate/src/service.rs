//! Running under a service manager. systemd's readiness protocol (`Type=notify`): `READY=1`
//! once every listener listens, `RELOADING=1` … `READY=1` around a SIGHUP reload, `STOPPING=1`
//! on shutdown; and log lines journald understands: the sd-daemon `<N>` priority prefix, and no
//! timestamp of our own (journald stamps each line). Outside systemd (no `NOTIFY_SOCKET`, no
//! `JOURNAL_STREAM`) nothing here changes anything.

use std::fmt;

use sd_notify::NotifyState;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::Gateway;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

/// Everything listens: the service has started.
pub fn ready(gw: &Gateway) {
    let addrs: Vec<String> = gw.local_addrs.iter().map(|a| a.to_string()).collect();
    let status = format!("accepting mail on {}", addrs.join(", "));
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// A reload begins (systemd waits for the next `READY=1`).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Shutting down: draining sessions and deliveries.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// Whether standard error is the journal's stream: systemd sets `JOURNAL_STREAM` to its
/// `device:inode`, which a child that redirected stderr does not share.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else { return false };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return false };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// A log line format for journald: `<3>` error, `<4>` warning, `<6>` info, `<7>` debug and
/// trace (journald takes the prefix as the line's priority and strips it), then the inner format.
/// journald makes every line an entry, so a message of several lines (a config parse error
/// quoting the file) has the prefix on each.
pub struct Journald<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for Journald<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        for part in line.trim_end_matches('\n').split('\n') {
            writeln!(writer, "<{priority}>{part}")?;
        }
        Ok(())
    }
}
