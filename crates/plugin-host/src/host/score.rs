//! `score`: the shared spam score of the session and transaction. Always granted.

use std::sync::{Arc, Mutex};

use super::{Caller, Context};
use crate::bindings::mailgate::plugin::score;
use crate::data::Scoreboard;

pub struct ScoreState {
    /// The chain's board: every plugin of the session adds to the same one.
    board: Arc<Mutex<Scoreboard>>,
    caller: Caller,
}

impl ScoreState {
    pub(super) fn new(cx: &Context<'_>) -> ScoreState {
        ScoreState { board: cx.score.clone(), caller: cx.caller() }
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Scoreboard> {
        self.board.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl score::Host for ScoreState {
    fn add(&mut self, points: f64, rule: String) -> wasmtime::Result<()> {
        if points.is_finite() {
            let rule: String = rule.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
            let Caller { plugin, sid } = &self.caller;
            tracing::debug!(%plugin, %sid, %rule, points, "score");
            self.board().add(rule, points);
        }
        Ok(())
    }
    fn total(&mut self) -> wasmtime::Result<f64> {
        Ok(self.board().total())
    }
    fn rules(&mut self) -> wasmtime::Result<Vec<(String, f64)>> {
        Ok(self.board().rules())
    }
}
