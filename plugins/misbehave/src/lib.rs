//! misbehave (test plugin): at one configured stage it loops forever, traps, recurses without
//! end, allocates until memory runs out, or answers a reply code that does not fit its verdict; or at DATA it
//! answers `count` modifications (`flood`: added recipients and header fields); or it writes
//! `count` log lines at the stage (`chatter`), so the host's limits and its `on-error`
//! handling can be tested.

use std::hint::black_box;

use mailgate_plugin_sdk::prelude::*;

#[derive(Default)]
struct Misbehave {
    /// `loop`, `trap`, `recurse`, `oom`, `bad-code`, `flood` or `chatter`.
    mode: String,
    /// Hook that misbehaves: init, connect, helo, auth, mail-from, rcpt, data, route, delivery.
    stage: String,
    /// Reply code for `bad-code` (999 by default; 200 is another good one).
    code: u16,
    /// Modifications `flood` answers at DATA: `r<i>@flood.test` recipients and `X-Flood`
    /// fields, alternating.
    count: u32,
}

// Config `lend = true`: it tells the host it keeps nothing between calls (true of it), so its
// instances are lent per call — and one that misbehaved must still be dropped.

impl Misbehave {
    /// Misbehaves if `stage` is the configured one; returns the bad verdict for `bad-code`.
    fn act(&self, stage: &str) -> Verdict {
        if stage != self.stage {
            return Verdict::Next;
        }
        log::info!("misbehave: {} at {stage}", self.mode);
        match self.mode.as_str() {
            "loop" => loop {
                black_box(&self.mode);
            },
            "oom" => loop {
                black_box(vec![1u8; 1 << 20].leak());
            },
            "trap" => panic!("misbehave: trap on purpose at {stage}"),
            "recurse" => Verdict::reject(
                550 + deeper(0, black_box(u64::MAX)) as u16 % 2,
                "5.0.0",
                "misbehave: the bottom of the stack",
            ),
            "chatter" => {
                for i in 0..self.count {
                    log::info!("misbehave: chatter line {i}");
                }
                Verdict::Next
            }
            _ => Verdict::reject(self.code, "5.0.0", format!("misbehave: code {}", self.code)),
        }
    }
}

/// Calls itself until the host's stack limit stops it. Nothing of a frame is in linear memory
/// (no shadow stack: only wasm's own call stack grows), and each call's result is rotated by
/// its own amount, which no optimiser turns into a loop.
#[inline(never)]
fn deeper(n: u64, end: u64) -> u64 {
    if n == end {
        return n;
    }
    deeper(n + 1, end).rotate_left((n % 61) as u32 + 1)
}

impl Filter for Misbehave {
    fn init(&mut self) -> Result<(), String> {
        self.mode = config::get_or("mode", "trap");
        self.stage = config::get_or("stage", "rcpt");
        self.code = config::parse("code")?.unwrap_or(999);
        self.count = config::parse("count")?.unwrap_or(100_000);
        if config::parse("lend")?.unwrap_or(false) {
            keeps_no_state();
        }
        if !["loop", "trap", "recurse", "oom", "bad-code", "flood", "chatter"]
            .contains(&self.mode.as_str())
        {
            return Err(format!("misbehave: unknown mode {:?}", self.mode));
        }
        if self.mode == "flood" {
            return Ok(());
        }
        match self.act("init") {
            Verdict::Next => Ok(()),
            _ => Err("misbehave: init fails on purpose".into()),
        }
    }
    fn on_connect(&mut self, _: &ConnectionInfo) -> Verdict {
        self.act("connect")
    }
    fn on_helo(&mut self, _: &ConnectionInfo, _: &str) -> Verdict {
        self.act("helo")
    }
    fn on_auth(&mut self, _: &ConnectionInfo, _: &AuthRequest) -> Verdict {
        self.act("auth")
    }
    fn on_mail_from(&mut self, _: &ConnectionInfo, _: &Envelope) -> Verdict {
        self.act("mail-from")
    }
    fn on_rcpt(&mut self, _: &ConnectionInfo, _: &Envelope, _: &str) -> Verdict {
        self.act("rcpt")
    }
    fn on_data(&mut self, _: &ConnectionInfo, _: &Envelope, _: &Message) -> DataResult {
        if self.mode == "flood" {
            log::info!("misbehave: flood of {} at data", self.count);
            return (0..self.count).fold(DataResult::next(), |r, i| {
                r.with(match i % 2 {
                    0 => Modification::AddRecipient(format!("r{i}@flood.test")),
                    _ => Modification::add_header("X-Flood", i.to_string()),
                })
            });
        }
        DataResult::verdict(self.act("data"))
    }
    fn on_route(&mut self, _: &Envelope, _: &str) -> RouteResult {
        RouteResult::verdict(self.act("route"))
    }
    fn on_delivery_result(&mut self, _: &DeliveryResult) {
        self.act("delivery");
    }
}

export!(Misbehave);
