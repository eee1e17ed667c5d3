//! Fuzzes the command-phase line reader and parser, and the DATA and BDAT receivers, with the
//! invariants the gateway relies on: no panic, and accepted content is canonical (CRLF line
//! ends only, no line over the limit, never more than the size limit).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailgate_smtp::content::Mode;
use mailgate_smtp::{Command, ContentReceiver, LineEvent, LineReader, Progress};

fn canonical(out: &[u8], max_line: usize) {
    let mut line = 0usize;
    for (i, &b) in out.iter().enumerate() {
        match b {
            b'\n' => {
                assert!(i > 0 && out[i - 1] == b'\r', "bare LF stored");
                line = 0;
            }
            b'\r' => assert!(out.get(i + 1) == Some(&b'\n'), "bare CR stored"),
            _ => {
                line += 1;
                assert!(line <= max_line, "line over the limit stored");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());

    // Command phase, fed in two reads.
    let mut reader = LineReader::new(512);
    let mut pending = Vec::new();
    for part in [&data[..split], &data[split..]] {
        pending.extend_from_slice(part);
        loop {
            let (ev, used) = reader.next(&pending);
            if let LineEvent::Line(l) = ev {
                assert!(!l.contains(&b'\n') && !l.contains(&b'\r'));
                let _ = Command::parse(l);
            }
            let more = !matches!(ev, LineEvent::NeedMore);
            pending.drain(..used);
            if !more {
                break;
            }
        }
    }

    // DATA and BDAT receivers, fed in two reads.
    for mode in [Mode::Data, Mode::Bdat] {
        let mut r = ContentReceiver::new(mode, 4096, 998);
        let mut out = Vec::new();
        let mut done = false;
        for part in [&data[..split], &data[split..]] {
            if done {
                break;
            }
            let (used, p) = r.feed(part, &mut out);
            assert!(used <= part.len());
            done = p == Progress::Done;
            assert!(mode == Mode::Data || !done, "BDAT never ends by itself");
        }
        let ok = match mode {
            Mode::Data => done && r.error().is_none(),
            Mode::Bdat => r.finish_bdat(&mut out).is_ok(),
        };
        if ok {
            assert!(out.len() <= 4096);
            canonical(&out, 998);
        }
    }
});
