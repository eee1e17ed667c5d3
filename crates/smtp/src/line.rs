//! Strict `<CRLF>` line framing for the command phase.
//!
//! Only CR LF ends a line. A bare LF, or a CR not followed by LF, makes the line an error: the
//! reader discards up to and including the next LF and reports it, so the peer gets a 5xx and the
//! stream stays in step. Over-long lines are likewise discarded and reported.

use memchr::memchr2;

/// Why a line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// A LF that was not preceded by CR.
    BareLf,
    /// A CR that was not followed by LF.
    BareCr,
    /// More octets than the configured limit before the CRLF.
    TooLong,
}

/// What [`LineReader::next`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum LineEvent<'a> {
    /// A complete line, without its CRLF.
    Line(&'a [u8]),
    /// A refused line; its octets have been consumed.
    Error(LineError),
    /// No complete line yet: read more input.
    NeedMore,
}

/// Splits a byte stream into CRLF-terminated lines. Holds no buffer of its own.
#[derive(Debug)]
pub struct LineReader {
    /// Longest accepted line including CRLF (RFC 5321 §4.5.3.1.4: 512 for commands).
    max_len: usize,
    /// Set while discarding the rest of a refused line; reported once its LF arrives.
    discarding: Option<LineError>,
}

impl LineReader {
    pub fn new(max_len: usize) -> Self {
        LineReader { max_len: max_len.max(3), discarding: None }
    }

    /// Changes the limit (e.g. for an AUTH continuation line).
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len.max(3);
    }

    /// Looks for the next line in `buf`. Returns the event and how many octets of `buf` it
    /// consumed; the caller drains them. The returned line borrows from `buf`.
    pub fn next<'a>(&mut self, buf: &'a [u8]) -> (LineEvent<'a>, usize) {
        if let Some(err) = self.discarding {
            return match memchr::memchr(b'\n', buf) {
                Some(i) => {
                    self.discarding = None;
                    (LineEvent::Error(err), i + 1)
                }
                None => (LineEvent::NeedMore, buf.len()),
            };
        }
        let Some(i) = memchr2(b'\r', b'\n', buf) else {
            if buf.len() >= self.max_len {
                self.discarding = Some(LineError::TooLong);
                return (LineEvent::NeedMore, buf.len());
            }
            return (LineEvent::NeedMore, 0);
        };
        if buf[i] == b'\n' {
            // LF with no CR before it.
            return (LineEvent::Error(LineError::BareLf), i + 1);
        }
        match buf.get(i + 1) {
            None if i + 2 > self.max_len => {
                self.discarding = Some(LineError::TooLong);
                (LineEvent::NeedMore, buf.len())
            }
            None => (LineEvent::NeedMore, 0),
            Some(b'\n') if i + 2 > self.max_len => (LineEvent::Error(LineError::TooLong), i + 2),
            Some(b'\n') => (LineEvent::Line(&buf[..i]), i + 2),
            // CR followed by something else: refuse the line, resync at the next LF.
            Some(_) => match memchr::memchr(b'\n', &buf[i + 1..]) {
                Some(j) => (LineEvent::Error(LineError::BareCr), i + 1 + j + 1),
                None => {
                    self.discarding = Some(LineError::BareCr);
                    (LineEvent::NeedMore, buf.len())
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_crlf_lines() {
        let mut r = LineReader::new(512);
        let buf = b"EHLO a\r\nNOOP\r\nQU";
        let (ev, n) = r.next(buf);
        assert_eq!(ev, LineEvent::Line(b"EHLO a"));
        let (ev, m) = r.next(&buf[n..]);
        assert_eq!(ev, LineEvent::Line(b"NOOP"));
        assert_eq!(r.next(&buf[n + m..]), (LineEvent::NeedMore, 0));
    }

    #[test]
    fn bare_lf_and_cr_are_errors() {
        let mut r = LineReader::new(512);
        assert_eq!(r.next(b"NOOP\nRSET\r\n"), (LineEvent::Error(LineError::BareLf), 5));
        assert_eq!(r.next(b"NO\rOP\r\n"), (LineEvent::Error(LineError::BareCr), 7));
        // A CR at the end of the buffer waits for the next byte.
        assert_eq!(r.next(b"NOOP\r"), (LineEvent::NeedMore, 0));
    }

    #[test]
    fn too_long_is_discarded_until_lf() {
        let mut r = LineReader::new(8);
        assert_eq!(r.next(b"0123456789"), (LineEvent::NeedMore, 10));
        assert_eq!(r.next(b"abc\r\nNOOP\r\n"), (LineEvent::Error(LineError::TooLong), 5));
        assert_eq!(r.next(b"NOOP\r\n"), (LineEvent::Line(b"NOOP"), 6));
        assert_eq!(r.next(b"0123456789\r\n"), (LineEvent::Error(LineError::TooLong), 12));
    }
}
