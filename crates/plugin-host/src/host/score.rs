//! `score`: the shared spam score of the session and transaction.

use super::HostState;
use crate::bindings::mailgate::plugin::score;

impl score::Host for HostState {
    fn add(&mut self, points: f64, rule: String) -> wasmtime::Result<()> {
        if points.is_finite() {
            let rule: String = rule.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
            tracing::debug!(plugin = %self.meta.name, sid = %self.sid, %rule, points, "score");
            self.score.lock().expect("score lock").add(rule, points);
        }
        Ok(())
    }
    fn total(&mut self) -> wasmtime::Result<f64> {
        Ok(self.score.lock().expect("score lock").total())
    }
    fn rules(&mut self) -> wasmtime::Result<Vec<(String, f64)>> {
        Ok(self.score.lock().expect("score lock").rules())
    }
}
