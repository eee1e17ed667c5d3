//! `hooks`: what a plugin says about its own code — the hooks it has none for, which the host
//! then stops calling for every instance of the plugin; that it keeps nothing of a session
//! (its `end-session` is then not called); that it keeps nothing between calls (its instances
//! are then lent to sessions one call at a time). Always allowed: it can only make the host
//! call the plugin less or hold fewer instances, never change an answer (an unused hook's
//! answer is the default one, which the chain reads as "no opinion"; a plugin that keeps state
//! after saying it keeps none only confuses itself — the host's state of an instance is new
//! for every session, and for every lent call, regardless).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use mailgate_config::Stage;

use super::{Caller, Context};
use crate::bindings::mailgate::plugin::hooks::{self, Hook};

/// What a plugin has said about its code, shared by all its instances.
#[derive(Default)]
pub struct UnusedHooks {
    /// The hooks it has no code for, as [`Stage::bit`]s.
    hooks: AtomicU8,
    /// Its instances keep nothing of a session: `end-session` is not called.
    no_session_state: AtomicBool,
    /// Its instances keep nothing between calls: they are lent one call at a time.
    no_state: AtomicBool,
}

/// A stage's bit in [`UnusedHooks`].
fn bit(stage: Stage) -> u8 {
    stage.bit()
}

impl UnusedHooks {
    /// Whether the plugin said it has no code at `stage`.
    pub fn contains(&self, stage: Stage) -> bool {
        self.hooks.load(Ordering::Relaxed) & bit(stage) != 0
    }

    /// Whether the plugin said its instances keep nothing of a session (`end-session` need
    /// not be called).
    pub fn keeps_no_session_state(&self) -> bool {
        self.no_session_state.load(Ordering::Relaxed) || self.keeps_no_state()
    }

    /// Whether the plugin said no call of its reads what an earlier one left (its instances
    /// may be lent to any session for one call).
    pub fn keeps_no_state(&self) -> bool {
        self.no_state.load(Ordering::Relaxed)
    }

    /// Adds `stages`; returns those that were not known before.
    fn add(&self, stages: &[Stage]) -> Vec<Stage> {
        let bits = stages.iter().fold(0, |b, s| b | bit(*s));
        let before = self.hooks.fetch_or(bits, Ordering::Relaxed);
        stages.iter().copied().filter(|s| before & bit(*s) == 0).collect()
    }
}

pub struct HooksState {
    unused: Arc<UnusedHooks>,
    caller: Caller,
}

impl HooksState {
    pub(super) fn new(cx: &Context<'_>) -> HooksState {
        HooksState { unused: cx.meta.unused.clone(), caller: cx.caller() }
    }
}

impl hooks::Host for HooksState {
    fn unused(&mut self, hooks: Hook) -> wasmtime::Result<()> {
        let named = [
            (Hook::CONNECT, Stage::Connect),
            (Hook::HELO, Stage::Helo),
            (Hook::AUTH, Stage::Auth),
            (Hook::MAIL_FROM, Stage::MailFrom),
            (Hook::RCPT, Stage::Rcpt),
            (Hook::DATA, Stage::Data),
            (Hook::ROUTE, Stage::Route),
            (Hook::DELIVERY_RESULT, Stage::DeliveryResult),
        ];
        let stages: Vec<Stage> = named.iter().filter(|(h, _)| hooks.contains(*h)).map(|(_, s)| *s).collect();
        for stage in self.unused.add(&stages) {
            tracing::info!(plugin = %self.caller.plugin, sid = %self.caller.sid, stage = stage.name(), "plugin has no code at this stage: not called there any more");
        }
        Ok(())
    }

    fn keeps_no_session_state(&mut self) -> wasmtime::Result<()> {
        if !self.unused.no_session_state.swap(true, Ordering::Relaxed) {
            tracing::info!(plugin = %self.caller.plugin, sid = %self.caller.sid, "plugin keeps no session state: its instances serve session after session without end-session");
        }
        Ok(())
    }

    fn keeps_no_state(&mut self) -> wasmtime::Result<()> {
        if !self.unused.no_state.swap(true, Ordering::Relaxed) {
            tracing::info!(plugin = %self.caller.plugin, sid = %self.caller.sid, "plugin keeps no state between calls: its instances are lent to sessions one call at a time");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stage_has_its_own_bit_and_only_new_ones_are_reported() {
        let u = UnusedHooks::default();
        assert!(Stage::ALL.iter().all(|s| !u.contains(*s)));
        assert_eq!(u.add(&[Stage::Helo, Stage::Route]), vec![Stage::Helo, Stage::Route]);
        assert_eq!(u.add(&[Stage::Route, Stage::DeliveryResult]), vec![Stage::DeliveryResult]);
        let set: Vec<Stage> = Stage::ALL.iter().copied().filter(|s| u.contains(*s)).collect();
        assert_eq!(set, vec![Stage::Helo, Stage::Route, Stage::DeliveryResult]);
    }
}
