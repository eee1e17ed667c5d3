//! Receiving message content: `DATA` (dot-stuffed, ended only by `<CRLF>.<CRLF>`) and `BDAT`
//! chunks (counted octets). Both enforce the same rules on the content: lines end with CRLF
//! (a bare CR or LF is an error — the SMTP smuggling defence), lines are at most 998 octets,
//! and the message is at most the size limit. After an error the receiver keeps consuming until
//! the end of the content (so the client and server stay in step) but stores nothing more.

use memchr::memchr3;

/// How the content is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `DATA`: dot-stuffing, ends at `<CRLF>.<CRLF>`.
    Data,
    /// `BDAT`: the session hands over exactly the chunk's octets; no stuffing.
    Bdat,
}

/// Why the content is refused; each knows its reply (5xx, but 4xx for the memory budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentError {
    BareLf,
    BareCr,
    LineTooLong,
    TooBig,
    /// A NUL octet: a next hop that drops NULs could read `<CRLF>NUL.<CRLF>` as the end of
    /// data (outbound smuggling), so by default the message is refused.
    Nul,
    /// The gateway's memory budget for content in flight is spent: try again later.
    OverBudget,
}

impl ContentError {
    pub fn reply(self) -> crate::Reply {
        use crate::{Enhanced, Reply};
        match self {
            ContentError::BareLf | ContentError::BareCr => Reply::new(
                550,
                Enhanced(5, 5, 2),
                "Message refused: bare CR or LF in content; lines must end with CRLF",
            ),
            ContentError::LineTooLong => {
                Reply::new(550, Enhanced(5, 6, 0), "Message refused: line longer than 998 octets")
            }
            ContentError::TooBig => Reply::new(552, Enhanced(5, 3, 4), "Message exceeds the size limit"),
            ContentError::Nul => Reply::new(550, Enhanced(5, 6, 0), "Message refused: NUL octet in content"),
            ContentError::OverBudget => {
                Reply::new(452, Enhanced(4, 3, 1), "Insufficient system storage, try again later")
            }
        }
    }
}

/// Whether the content has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    NeedMore,
    /// `<CRLF>.<CRLF>` seen (DATA only); the octets after it are the next commands.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    LineStart,
    Mid,
    /// After a CR, waiting for its LF.
    Cr,
    /// A '.' at the start of a line (DATA).
    Dot,
    /// `.` CR at the start of a line (DATA): LF now ends the content.
    DotCr,
}

/// The content receiver. One per message; see the module docs.
#[derive(Debug)]
pub struct ContentReceiver {
    mode: Mode,
    state: State,
    /// Size limit of the stored (unstuffed) message, in octets.
    max_size: u64,
    /// Longest line content without CRLF (RFC 5322: 998).
    max_line: usize,
    /// Octets of the current line so far.
    line_len: usize,
    /// Octets of content so far (stored or not).
    size: u64,
    /// The first error; from then on nothing more is stored.
    error: Option<ContentError>,
    /// NUL octets are dropped instead of refused (`limits.nul_bytes = "strip"`).
    strip_nul: bool,
    /// NUL octets dropped so far.
    stripped: u64,
}

impl ContentReceiver {
    pub fn new(mode: Mode, max_size: u64, max_line: usize) -> Self {
        ContentReceiver {
            mode,
            state: State::LineStart,
            max_size,
            max_line,
            line_len: 0,
            size: 0,
            error: None,
            strip_nul: false,
            stripped: 0,
        }
    }

    /// Drops NUL octets instead of refusing the message for them.
    pub fn strip_nul(mut self, strip: bool) -> Self {
        self.strip_nul = strip;
        self
    }

    /// NUL octets dropped so far (with [`ContentReceiver::strip_nul`]).
    pub fn stripped(&self) -> u64 {
        self.stripped
    }

    /// Octets of content so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The first error seen, if any.
    pub fn error(&self) -> Option<ContentError> {
        self.error
    }

    fn fail(&mut self, e: ContentError) {
        self.error.get_or_insert(e);
    }

    /// Refuses the content from here on for a reason outside the content (the memory budget):
    /// the rest is still consumed, nothing more is stored.
    pub fn abort(&mut self, e: ContentError) {
        self.fail(e);
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.size += bytes.len() as u64;
        if self.size > self.max_size {
            self.fail(ContentError::TooBig);
        }
        if self.error.is_none() {
            out.extend_from_slice(bytes);
        }
    }

    /// Consumes `input`, appending the content to `out`. Returns how many octets were consumed
    /// (all of them unless the end of DATA was reached) and whether the content is complete.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Progress) {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::LineStart => {
                    if self.mode == Mode::Data && input[i] == b'.' {
                        self.state = State::Dot;
                        self.line_len = 1;
                        i += 1;
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::Dot => {
                    if input[i] == b'\r' {
                        self.state = State::DotCr;
                        i += 1;
                    } else {
                        // A stuffed dot: it is dropped, the rest of the line is content.
                        self.state = State::Mid;
                    }
                }
                State::DotCr => {
                    if input[i] == b'\n' {
                        return (i + 1, Progress::Done);
                    }
                    // ".<CR>x": a bare CR on a dot-stuffed line.
                    self.fail(ContentError::BareCr);
                    self.state = State::Mid;
                }
                State::Cr => {
                    if input[i] == b'\n' {
                        self.emit(b"\r\n", out);
                        self.state = State::LineStart;
                        self.line_len = 0;
                        i += 1;
                    } else {
                        self.fail(ContentError::BareCr);
                        self.state = State::Mid;
                    }
                }
                State::Mid => {
                    let rest = &input[i..];
                    let j = memchr3(b'\r', b'\n', 0, rest).unwrap_or(rest.len());
                    self.line_len += j;
                    if self.line_len > self.max_line {
                        self.fail(ContentError::LineTooLong);
                    }
                    self.emit(&rest[..j], out);
                    i += j;
                    match rest.get(j) {
                        Some(b'\r') => {
                            self.state = State::Cr;
                            i += 1;
                        }
                        Some(0) => {
                            // Never stored: refused, or dropped (and then not counted).
                            if self.strip_nul {
                                self.stripped += 1;
                            } else {
                                self.fail(ContentError::Nul);
                            }
                            i += 1;
                        }
                        Some(_) => {
                            // A bare LF: refused, and never a line start, so a following
                            // ".\r\n" cannot end the content (SMTP smuggling).
                            self.fail(ContentError::BareLf);
                            i += 1;
                        }
                        None => {}
                    }
                }
            }
        }
        (i, Progress::NeedMore)
    }

    /// Ends BDAT content at `BDAT ... LAST`: a trailing CR is a bare CR; content that does not
    /// end with CRLF gets one, so the stored message is canonical. Returns the error, if any.
    pub fn finish_bdat(&mut self, out: &mut Vec<u8>) -> Result<(), ContentError> {
        match self.state {
            State::Cr | State::DotCr => self.fail(ContentError::BareCr),
            State::Mid | State::Dot if self.line_len > 0 => self.emit(b"\r\n", out),
            _ => {}
        }
        self.error.map_or(Ok(()), Err)
    }
}

/// What a BDAT receiver (`max_size`, `max_line`, NULs refused or stripped) would store of
/// whole content in memory, when that is the content itself (`Some(false)`) or the content and
/// a final CRLF (`Some(true)`: it has no line end after its last line), without an error: CRLF
/// line ends only, no NUL, no line longer than `max_line`, within the size. Such content can be
/// kept as it is instead of copied through a receiver; `None`: run the receiver.
pub fn as_stored(data: &[u8], max_size: u64, max_line: usize) -> Option<bool> {
    let add_crlf = !data.is_empty() && !data.ends_with(b"\r\n");
    if data.len() as u64 + 2 * u64::from(add_crlf) > max_size {
        return None;
    }
    // Three passes, each vectorised and each stopping only at line ends: no NUL; every LF
    // right after a CR on a line short enough; and as many CRs as LFs (so every CR is one of
    // those CRLFs: none is bare).
    if memchr::memchr(0, data).is_some() {
        return None;
    }
    let (mut line_start, mut lfs) = (0, 0);
    for i in memchr::memchr_iter(b'\n', data) {
        if i == 0 || data[i - 1] != b'\r' || i - 1 - line_start > max_line {
            return None;
        }
        line_start = i + 1;
        lfs += 1;
    }
    if memchr::memchr_iter(b'\r', data).count() != lfs {
        return None;
    }
    (data.len() - line_start <= max_line).then_some(add_crlf)
}

/// Makes text canonical for SMTP: every bare LF or bare CR becomes CRLF, and non-empty text
/// ends with CRLF. For content that does not come off the wire (plugin bodies, files).
pub fn to_crlf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + b.len() / 40 + 2);
    // Runs between bare line ends are copied whole; only CR and LF octets are looked at.
    let mut from = 0;
    for i in memchr::memchr2_iter(b'\r', b'\n', b) {
        let bare = match b[i] {
            b'\r' => b.get(i + 1) != Some(&b'\n'),
            _ => i == 0 || b[i - 1] != b'\r',
        };
        if bare {
            out.extend_from_slice(&b[from..i]);
            out.extend_from_slice(b"\r\n");
            from = i + 1;
        }
    }
    out.extend_from_slice(&b[from..]);
    if !matches!(b.last(), None | Some(b'\r' | b'\n')) {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// [`to_crlf`] of content that is owned: content that is canonical already (the common case)
/// is handed back as it is, without a copy.
pub fn into_crlf(b: Vec<u8>) -> Vec<u8> {
    let canonical = (b.is_empty() || b.ends_with(b"\r\n"))
        && memchr::memchr2_iter(b'\r', b'\n', &b).all(|i| match b[i] {
            b'\r' => b.get(i + 1) == Some(&b'\n'),
            _ => i > 0 && b[i - 1] == b'\r',
        });
    if canonical {
        b
    } else {
        to_crlf(&b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls `f` with every text of up to `max_len` octets drawn from `alphabet`.
    fn every_text(alphabet: &[u8], max_len: u32, mut f: impl FnMut(&[u8])) {
        let mut data = vec![];
        for len in 0..=max_len {
            for n in 0..alphabet.len().pow(len) {
                data.clear();
                let mut k = n;
                for _ in 0..len {
                    data.push(alphabet[k % alphabet.len()]);
                    k /= alphabet.len();
                }
                f(&data);
            }
        }
    }

    /// `as_stored` says what a BDAT receiver stores exactly when it stores the content itself
    /// or the content and a CRLF without an error, for every content of up to 7 octets from the
    /// octets that matter, at small limits (NULs refused, and stripped).
    #[test]
    fn as_stored_exactly_when_a_receiver_keeps_the_content() {
        every_text(&[b'a', b'\r', b'\n', 0, b'.'], 7, |data| {
            for (max_size, max_line, strip) in [(6, 2, false), (100, 3, true), (100, 100, false)] {
                let mut r = ContentReceiver::new(Mode::Bdat, max_size, max_line).strip_nul(strip);
                let mut out = vec![];
                r.feed(data, &mut out);
                let ok = r.finish_bdat(&mut out).is_ok();
                let want = match (ok, out.strip_prefix(data)) {
                    (true, Some(b"")) => Some(false),
                    (true, Some(b"\r\n")) => Some(true),
                    _ => None,
                };
                assert_eq!(as_stored(data, max_size, max_line), want, "{data:?} {max_size} {max_line}");
            }
        });
    }

    #[test]
    fn canonical_line_ends() {
        assert_eq!(to_crlf(b"a\nb\rc\r\nd"), b"a\r\nb\r\nc\r\nd\r\n");
        assert_eq!(to_crlf(b""), b"");
        assert_eq!(to_crlf(b"x\r"), b"x\r\n");
    }

    /// The definition, octet by octet: a CR not followed by LF and an LF not preceded by CR
    /// each become CRLF; non-empty text ends with CRLF.
    fn to_crlf_reference(b: &[u8]) -> Vec<u8> {
        let mut out = vec![];
        let mut prev = 0u8;
        for &c in b {
            if c == b'\n' && prev != b'\r' {
                out.push(b'\r');
            }
            if prev == b'\r' && c != b'\n' {
                out.push(b'\n');
            }
            out.push(c);
            prev = c;
        }
        if prev == b'\r' {
            out.push(b'\n');
        } else if !out.is_empty() && prev != b'\n' {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// `to_crlf` and `into_crlf` agree with the definition for every text of up to 8 octets
    /// from the octets that matter, and `into_crlf` keeps canonical text without a copy.
    #[test]
    fn line_ends_agree_with_the_definition_for_every_short_text() {
        every_text(b"a\r\n", 8, |data| {
            let want = to_crlf_reference(data);
            assert_eq!(to_crlf(data), want, "{data:?}");
            let owned = data.to_vec();
            let ptr = owned.as_ptr();
            let got = into_crlf(owned);
            assert_eq!(got, want, "{data:?}");
            if want == data && !data.is_empty() {
                assert_eq!(got.as_ptr(), ptr, "canonical {data:?} was copied");
            }
        });
    }

    fn data(chunks: &[&[u8]]) -> (Vec<u8>, Option<ContentError>, usize) {
        let mut r = ContentReceiver::new(Mode::Data, 1 << 20, 998);
        let mut out = Vec::new();
        for (n, c) in chunks.iter().enumerate() {
            let (used, p) = r.feed(c, &mut out);
            if p == Progress::Done {
                assert_eq!(n, chunks.len() - 1, "ended early");
                return (out, r.error(), c.len() - used);
            }
        }
        panic!("did not end");
    }

    #[test]
    fn dot_unstuffing_and_end() {
        let (out, e, left) = data(&[b"Subject: x\r\n\r\n..hidden\r\n.\r\nQUIT\r\n"]);
        assert_eq!(out, b"Subject: x\r\n\r\n.hidden\r\n");
        assert_eq!((e, left), (None, 6));
        // The end marker split across reads.
        let (out, e, _) = data(&[b"a\r", b"\n.", b"\r", b"\n"]);
        assert_eq!((out.as_slice(), e), (&b"a\r\n"[..], None));
        let (out, _, _) = data(&[b".\r\n"]);
        assert!(out.is_empty());
    }

    #[test]
    fn smuggling_is_not_an_end() {
        // "\n.\n" and "\r\n.\n" and "\n.\r\n" never end DATA; only CRLF.CRLF does.
        let (out, e, _) = data(&[b"a\n.\nMAIL FROM:<x@y>\r\nb\r\n.\n\r\nc\n.\r\nd\r\n.\r\n"]);
        assert_eq!(e, Some(ContentError::BareLf));
        assert!(out.is_empty() || !out.ends_with(b"MAIL"));
        let (_, e, _) = data(&[b"a\rb\r\n.\r\n"]);
        assert_eq!(e, Some(ContentError::BareCr));
    }

    #[test]
    fn limits() {
        let long = vec![b'x'; 999];
        let (_, e, _) = data(&[&long, b"\r\n.\r\n"]);
        assert_eq!(e, Some(ContentError::LineTooLong));
        let mut r = ContentReceiver::new(Mode::Data, 10, 998);
        let mut out = Vec::new();
        let (_, p) = r.feed(b"0123456789abc\r\n.\r\n", &mut out);
        assert_eq!((p, r.error()), (Progress::Done, Some(ContentError::TooBig)));
    }

    #[test]
    fn nul_is_refused_or_stripped_anywhere_in_a_line() {
        // At a line start, mid-line, right before the end marker, and around a dot.
        for input in [
            &b"a\r\n\0.\r\nb\r\n.\r\n"[..],
            b"a\0b\r\n.\r\n",
            b"\0\r\n.\r\n",
            b"a\r\n.\0\r\n.\r\n",
            b"a\r\n..\0\r\n.\r\n",
        ] {
            let (_, e, _) = data(&[input]);
            assert_eq!(e, Some(ContentError::Nul), "{input:?}");
            let mut r = ContentReceiver::new(Mode::Data, 1 << 20, 998).strip_nul(true);
            let mut out = Vec::new();
            let (_, p) = r.feed(input, &mut out);
            assert_eq!((p, r.error()), (Progress::Done, None), "{input:?}");
            assert!(!out.contains(&0) && r.stripped() == 1, "{input:?}");
        }
        // "<CRLF>NUL.<CRLF>" stripped is a line holding one dot: stored as it stands, so the
        // delivery dot-stuffs it like any other line.
        let mut r = ContentReceiver::new(Mode::Data, 1 << 20, 998).strip_nul(true);
        let mut out = Vec::new();
        r.feed(b"a\r\n\0.\r\nb\r\n.\r\n", &mut out);
        assert_eq!(out, b"a\r\n.\r\nb\r\n");
        // BDAT the same.
        let mut r = ContentReceiver::new(Mode::Bdat, 1 << 20, 998);
        r.feed(b"a\r\n\0.\r\n", &mut out);
        assert_eq!(r.finish_bdat(&mut out), Err(ContentError::Nul));
        assert_eq!(ContentError::Nul.reply().to_string(), "550 5.6.0 Message refused: NUL octet in content");
    }

    #[test]
    fn bdat_counts_octets_and_checks_lines() {
        let mut r = ContentReceiver::new(Mode::Bdat, 1 << 20, 998);
        let mut out = Vec::new();
        assert_eq!(r.feed(b"Subject: a\r\n\r\n.x\r", &mut out), (17, Progress::NeedMore));
        assert_eq!(r.feed(b"\nend", &mut out), (4, Progress::NeedMore));
        assert_eq!(r.finish_bdat(&mut out), Ok(()));
        assert_eq!(out, b"Subject: a\r\n\r\n.x\r\nend\r\n");
        let mut r = ContentReceiver::new(Mode::Bdat, 1 << 20, 998);
        r.feed(b"a\nb", &mut out);
        assert_eq!(r.finish_bdat(&mut out), Err(ContentError::BareLf));
    }
}
