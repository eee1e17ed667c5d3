//! Message → tokens. Tokens are lower-case, unique per message and carry a prefix naming
//! where they came from (`subject:`, `from:`, `url:`, ...; body words have none), so "free" in
//! a subject and in a body are learnt apart.

use std::cmp::Ordering;
use std::collections::BTreeSet;

/// Header fields whose words become tokens (besides Subject). Received and list headers are
/// left out on purpose: they name the corpus' own relays and would teach the model where a
/// message was collected instead of what it says.
pub const HEADERS: &[&str] = &[
    "from",
    "reply-to",
    "content-type",
    "content-transfer-encoding",
    "message-id",
    "x-mailer",
    "user-agent",
    "x-priority",
];

/// Most tokens taken from one message (bounds CPU per message and the look-up size).
pub const MAX_TOKENS: usize = 3000;
/// Most body bytes tokenized.
const MAX_TEXT: usize = 64 * 1024;

/// What the tokenizer reads of a message.
#[derive(Debug, Default, Clone)]
pub struct Input<'a> {
    /// The decoded Subject.
    pub subject: Option<&'a str>,
    /// (lower-case name, decoded value) of the fields in [`HEADERS`] that are present.
    pub headers: Vec<(&'a str, &'a str)>,
    /// The text body (or the HTML body converted to text).
    pub text: Option<&'a str>,
    /// The HTML part, if any: its tags and attributes become tokens.
    pub html: Option<&'a str>,
}

fn trim_word(w: &str) -> &str {
    w.trim_matches(|c: char| !c.is_alphanumeric() && c != '$' && c != '!' && c != '%')
}

/// Adds the tokens of free text: words of 3–12 characters as they are, longer ones as a
/// "skip" token of their first letter and length bucket, URLs as their host name's parts.
fn text_tokens(prefix: &str, text: &str, out: &mut Tokens) {
    // One buffer for every word's lower case and one for the token: a word seen before (most
    // of a text's words) costs no allocation.
    let (mut lower, mut token) = (String::new(), String::new());
    let word = |raw: &str| {
        if raw.is_ascii() {
            ascii_word(prefix, raw, &mut lower, &mut token, out);
            return;
        }
        lower_into(raw, &mut lower);
        if let Some(pos) = url_start(&lower) {
            url_tokens(&lower[pos..], out);
            return;
        }
        let w = trim_word(&lower);
        word_token(prefix, w, w.chars().count(), &mut token, out);
    };
    if text.is_ascii() {
        // Octet by octet instead of char by char, and a word's octets eight at a time.
        let b = text.as_bytes();
        let mut at = 0;
        while at < b.len() {
            while b.get(at).is_some_and(|c| is_space(*c)) {
                at += 1;
            }
            let start = at;
            at = word_end(b, at);
            if start < at {
                // ASCII octets split at ASCII octets: the slice is text (and ASCII).
                ascii_word(prefix, &text[start..at], &mut lower, &mut token, out);
            }
        }
    } else {
        text.split_whitespace().for_each(word);
    }
}

/// Unicode's White_Space within ASCII: HT, LF, VT, FF, CR and space (VT is not in
/// `u8::is_ascii_whitespace`).
fn is_space(c: u8) -> bool {
    matches!(c, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ')
}

/// Where the word of ASCII text `b` that starts at `at` ends: the next space, or the end.
/// Eight octets are passed over at once while none is below `!` (every space is: the
/// subtraction borrows into an octet's top bit only there, for octets below 0x80).
fn word_end(b: &[u8], mut at: usize) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x21; 8]);
    const TOPS: u64 = u64::from_le_bytes([0x80; 8]);
    while let Some(eight) = b.get(at..at + 8).and_then(|s| <[u8; 8]>::try_from(s).ok()) {
        let x = u64::from_le_bytes(eight);
        if x.wrapping_sub(ONES) & !x & TOPS != 0 {
            break;
        }
        at += 8;
    }
    while b.get(at).is_some_and(|c| !is_space(*c)) {
        at += 1;
    }
    at
}

/// The tokens of an ASCII word, as the general path makes them, with the lower case written
/// only where a token needs it (a long word's token has only its first letter).
fn ascii_word(prefix: &str, raw: &str, lower: &mut String, token: &mut String, out: &mut Tokens) {
    // Every URL has a colon: most words are passed over by one memchr.
    if let Some(pos) = raw.as_bytes().contains(&b':').then(|| url_start_ignoring_case(raw)).flatten() {
        lower_into(&raw[pos..], lower);
        url_tokens(lower, out);
        return;
    }
    let w = trim_word(raw);
    word_token(prefix, w, w.len(), token, out);
}

/// Adds the token of a trimmed word of `n` characters: the word, or when longer than 12 a
/// "skip" token of its first letter and length bucket; nothing when shorter than 3. Lower case
/// as the text's lower case has it (`w` is lower case already, or ASCII).
fn word_token(prefix: &str, w: &str, n: usize, token: &mut String, out: &mut Tokens) {
    if n < 3 {
        return;
    }
    token.clear();
    token.push_str(prefix);
    let at = token.len();
    if n > 12 {
        token.push_str("skip:");
        token.push(w.chars().next().unwrap_or('_'));
        // The length bucket, n / 10 * 10: its tens' digits and a 0 (`write!` cost more than
        // the rest of the token).
        let tens = n / 10;
        let mut p = 1;
        while p <= tens / 10 {
            p *= 10;
        }
        while p > 0 {
            token.push(char::from(b'0' + (tens / p % 10) as u8));
            p /= 10;
        }
        token.push('0');
    } else {
        token.push_str(w);
    }
    token[at..].make_ascii_lowercase();
    out.add(token);
}

/// `raw` in lower case, into `out`: ASCII without Unicode's tables (the same result for it).
fn lower_into(raw: &str, out: &mut String) {
    out.clear();
    if raw.is_ascii() {
        out.push_str(raw);
        out.make_ascii_lowercase();
    } else {
        out.push_str(&raw.to_lowercase());
    }
}

/// Where a URL starts in a word: its first `http://`, or else its first `https://`. One pass
/// over the word's `h`s instead of two substring searchers set up for every word.
fn url_start(word: &str) -> Option<usize> {
    url_start_by(word, |rest, scheme| rest.starts_with(scheme))
}

/// [`url_start`] of the word's lower case, for an ASCII word (whose lower case has its
/// octets at the same places).
fn url_start_ignoring_case(word: &str) -> Option<usize> {
    url_start_by(word, |rest, scheme| rest.get(..scheme.len()).is_some_and(|r| r.eq_ignore_ascii_case(scheme)))
}

fn url_start_by(word: &str, is: impl Fn(&[u8], &[u8]) -> bool) -> Option<usize> {
    let b = word.as_bytes();
    let mut https = None;
    let mut at = 0;
    while let Some(i) = b[at..].iter().position(|c| c.eq_ignore_ascii_case(&b'h')) {
        let rest = &b[at + i..];
        if is(rest, b"http://") {
            return Some(at + i);
        }
        if https.is_none() && is(rest, b"https://") {
            https = Some(at + i);
        }
        at += i + 1;
    }
    https
}

/// A token, ordered by length first and then octet by octet. A message's set of tokens makes
/// a dozen comparisons for every word of the text; most end at the lengths this way, where
/// comparing the octets first walks the prefixes most tokens share (`subject:`, `url:`) —
/// octet by octet, in wasm — and cost the plugin more than all the rest of reading the text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Token(String);

impl Ord for Token {
    fn cmp(&self, other: &Token) -> Ordering {
        self.0.len().cmp(&other.0.len()).then_with(|| self.0.as_bytes().cmp(other.0.as_bytes()))
    }
}

impl PartialOrd for Token {
    fn partial_cmp(&self, other: &Token) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A message's tokens so far, each once.
#[derive(Default)]
struct Tokens {
    set: BTreeSet<Token>,
    /// The token being looked for, in a buffer kept between look-ups (no allocation for a
    /// word seen before, which most of a text's words are).
    probe: Token,
}

impl Tokens {
    /// Adds a copy of `token` unless the set has it.
    fn add(&mut self, token: &str) {
        self.probe.0.clear();
        self.probe.0.push_str(token);
        if !self.set.contains(&self.probe) {
            self.set.insert(self.probe.clone());
        }
    }

    fn insert(&mut self, token: String) {
        self.set.insert(Token(token));
    }

    fn len(&self) -> usize {
        self.set.len()
    }

    fn into_strings(self) -> impl Iterator<Item = String> {
        self.set.into_iter().map(|t| t.0)
    }
}

fn url_tokens(url: &str, out: &mut Tokens) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', '?', '#', '"', '\'', '>', '<', ')']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host).split(':').next().unwrap_or("");
    if host.is_empty() {
        return;
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        out.insert("url:ip-literal".to_string());
        return;
    }
    for part in host.split('.').filter(|p| !p.is_empty()) {
        out.insert(format!("url:{part}"));
    }
    if rest.len() > host.len() + 60 {
        out.insert("url:long-path".to_string());
    }
}

/// Adds the hosts that the HTML's links and images point to. (Tag and attribute names were
/// tried as tokens: they taught the model that HTML newsletters are spam, and false positives
/// on hard ham doubled.)
fn html_tokens(html: &str, out: &mut Tokens) {
    for tag in window(html).split('<').skip(1) {
        let inner = tag.split('>').next().unwrap_or("");
        let mut words = inner.split_whitespace();
        let name: String = words.next().unwrap_or("").to_lowercase().chars().take(12).collect();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '/') {
            continue;
        }
        for attr in words {
            let (_, value) = attr.split_once('=').unwrap_or((attr, ""));
            let value = value.trim_matches(|c| c == '"' || c == '\'');
            if value.starts_with("http://") || value.starts_with("https://") {
                url_tokens(&value.to_lowercase(), out);
            }
        }
    }
}

/// Adds a header's words: split at anything that is not a letter or digit.
fn header_tokens(name: &str, value: &str, out: &mut Tokens) {
    let (mut lower, mut token) = (String::new(), String::new());
    for w in value.split(|c: char| !c.is_alphanumeric()).filter(|w| w.len() >= 2) {
        lower_into(w, &mut lower);
        if lower.len() <= 20 || lower.chars().count() <= 20 {
            token.clear();
            token.push_str(name);
            token.push(':');
            token.push_str(&lower);
            out.add(&token);
        }
    }
}

/// The message's tokens, each once, at most [`MAX_TOKENS`] (a hash-chosen sample of them when
/// there are more), in an order of their own (by length, then octets; sorted when sampled).
pub fn tokens(input: &Input<'_>) -> Vec<String> {
    let mut out = Tokens::default();
    match input.subject {
        Some(s) => {
            text_tokens("subject:", s, &mut out);
            let letters: Vec<char> = s.chars().filter(|c| c.is_alphabetic()).collect();
            if letters.len() >= 8 && letters.iter().all(|c| c.is_uppercase()) {
                out.insert("subject:*all-caps*".to_string());
            }
        }
        None => {
            out.insert("subject:*none*".to_string());
        }
    }
    for (name, value) in &input.headers {
        header_tokens(name, value, &mut out);
    }
    if let Some(html) = input.html {
        out.insert("*has-html*".to_string());
        html_tokens(html, &mut out);
    }
    match input.text {
        Some(t) => text_tokens("", &window(t), &mut out),
        None => {
            out.insert("*no-text*".to_string());
        }
    }
    if out.len() <= MAX_TOKENS {
        return out.into_strings().collect();
    }
    // Too many: keep the MAX_TOKENS with the smallest hashes (a bottom-k sample). Unlike the
    // first MAX_TOKENS in reading order, filler words put in front cannot push the message's
    // real words out; they only dilute the sample.
    let mut hashed: Vec<(u64, String)> = out.into_strings().map(|t| (fnv1a(&t), t)).collect();
    hashed.select_nth_unstable_by_key(MAX_TOKENS - 1, |(h, _)| *h);
    hashed.truncate(MAX_TOKENS);
    let mut kept: Vec<String> = hashed.into_iter().map(|(_, t)| t).collect();
    kept.sort();
    kept
}

/// FNV-1a with a splitmix64 finaliser: FNV alone leaves the high bits nearly equal for
/// words with a common prefix, which would bias the sample.
fn fnv1a(s: &str) -> u64 {
    let mut z = s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// At most MAX_TEXT bytes of `t`: the first three quarters and the last quarter when longer,
/// so that padding in the middle or front cannot hide the end of a message.
fn window(t: &str) -> std::borrow::Cow<'_, str> {
    if t.len() <= MAX_TEXT {
        return t.into();
    }
    let floor = |mut i: usize| {
        while !t.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let head = floor(MAX_TEXT / 4 * 3);
    let tail = floor(t.len() - MAX_TEXT / 4);
    format!("{} {}", &t[..head], &t[tail..]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tokenizer as it was written first (a model trained with it must keep working): the
    /// oracle for the one above.
    mod reference {
        use std::collections::BTreeSet;

        pub fn text_tokens(prefix: &str, text: &str, out: &mut BTreeSet<String>) {
            for raw in text.split_whitespace() {
                let lower = raw.to_lowercase();
                if let Some(pos) = lower.find("http://").or_else(|| lower.find("https://")) {
                    let mut urls = super::Tokens::default();
                    super::url_tokens(&lower[pos..], &mut urls);
                    out.extend(urls.into_strings());
                    continue;
                }
                let w = super::trim_word(&lower);
                let n = w.chars().count();
                if n < 3 {
                    continue;
                }
                if n > 12 {
                    let first = w.chars().next().unwrap_or('_');
                    out.insert(format!("{prefix}skip:{first}{}", n / 10 * 10));
                } else {
                    out.insert(format!("{prefix}{w}"));
                }
            }
        }

        pub fn header_tokens(name: &str, value: &str, out: &mut BTreeSet<String>) {
            for w in value.split(|c: char| !c.is_alphanumeric()).filter(|w| w.len() >= 2) {
                let w = w.to_lowercase();
                if w.chars().count() <= 20 {
                    out.insert(format!("{name}:{w}"));
                }
            }
        }
    }

    /// Random text from pieces that reach every branch: URLs of both schemes anywhere in a
    /// word, words around every length limit, upper case, non-ASCII letters whose lower case
    /// is longer (İ) or depends on the word (final Σ), punctuation that is trimmed or kept.
    fn random_text(seed: &mut u64, words: usize) -> String {
        const PIECES: &[&str] = &[
            "http://",
            "https://",
            "HTTP://",
            "hTtPs://",
            "h",
            "ht",
            "http",
            "https:/",
            "x.example",
            "/path?q=1",
            "203.0.113.9",
            "@",
            ":",
            "a",
            "ab",
            "abc",
            "ABCDEFGHIJKL",
            "abcdefghijklm",
            "Wörter",
            "İstanbul",
            "ΟΔΟΣ",
            "Σ",
            "ß",
            "ǅ",
            "$",
            "!",
            "%",
            ".",
            ",",
            "\"",
            "'",
            "-",
            "_",
            "0",
            "99",
            "é",
            "日本",
        ];
        let mut next = || {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        };
        let mut t = String::new();
        for _ in 0..words {
            for _ in 0..1 + next() % 4 {
                t.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            t.push(match next() % 9 {
                0 => '\n',
                1 => '\t',
                2 => '\u{a0}',
                3 => '\u{0b}',
                4 => '\u{0c}',
                5 => '\r',
                _ => ' ',
            });
        }
        t
    }

    #[test]
    fn tokens_are_those_of_the_first_tokenizer() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for round in 0..6000 {
            let mut text = random_text(&mut seed, 1 + round % 40);
            if round % 2 == 0 {
                // Half of them ASCII, the way most text is (and the fast path).
                text.retain(|c| c.is_ascii());
            }
            for prefix in ["", "subject:"] {
                let (mut ours, mut theirs) = (Tokens::default(), BTreeSet::new());
                text_tokens(prefix, &text, &mut ours);
                reference::text_tokens(prefix, &text, &mut theirs);
                assert_eq!(ours.into_strings().collect::<BTreeSet<_>>(), theirs, "{text:?}");
            }
            let (mut ours, mut theirs) = (Tokens::default(), BTreeSet::new());
            header_tokens("from", &text, &mut ours);
            reference::header_tokens("from", &text, &mut theirs);
            assert_eq!(ours.into_strings().collect::<BTreeSet<_>>(), theirs, "{text:?}");
        }
        // Long words of every bucket width (the random texts' words stay under 100 characters).
        for n in [13, 99, 100, 109, 1_000, 12_345, 100_000] {
            for text in ["x".repeat(n), format!("{} {}", "X".repeat(n), "É".repeat(n))] {
                let (mut ours, mut theirs) = (Tokens::default(), BTreeSet::new());
                text_tokens("", &text, &mut ours);
                reference::text_tokens("", &text, &mut theirs);
                assert_eq!(ours.into_strings().collect::<BTreeSet<_>>(), theirs, "{n}");
            }
        }
        for (w, at) in
            [("xhttps://a/http://b", Some(11)), ("https://a", Some(0)), ("hhttp:/", None), ("ahttps://", Some(1))]
        {
            assert_eq!(url_start(w), at, "{w}");
        }
    }

    #[test]
    fn token_order_is_length_then_octets() {
        let words = [
            "",
            "a",
            "b",
            "ab",
            "ba",
            "abcdefgh",
            "abcdefgi",
            "abcdefghi",
            "abcdefgha",
            "abcdefgh\u{7f}",
            "x".repeat(17).as_str(),
        ]
        .map(String::from);
        for p in &words {
            for q in &words {
                let want = p.len().cmp(&q.len()).then(p.cmp(q));
                assert_eq!(Token(p.clone()).cmp(&Token(q.clone())), want, "{p:?} {q:?}");
            }
        }
    }

    #[test]
    fn tokens_are_prefixed_unique_and_bounded() {
        let input = Input {
            subject: Some("FREE MONEY for you"),
            headers: vec![("from", "\"Win Big\" <promo@cheap-pills.example>")],
            text: Some("Click http://203.0.113.9/buy now!! Click https://www.cheap-pills.example/x?y=1 antidisestablishmentarianism a"),
            html: Some("<p><FONT color=red size=+2>Win</font><img src=\"http://img.example/a.gif\"></p>"),
        };
        let t = tokens(&input);
        for want in [
            "subject:free",
            "subject:money",
            "from:cheap",
            "from:pills",
            "url:ip-literal",
            "url:cheap-pills",
            "click",
            "now!!",
            "skip:a20",
            "*has-html*",
            "url:img",
        ] {
            assert!(t.contains(&want.to_string()), "{want} missing from {t:?}");
        }
        assert_eq!(t.iter().filter(|x| *x == "click").count(), 1);
        let long = "word ".repeat(10) + &(0..10_000).map(|i| format!("w{i:05} ")).collect::<String>();
        assert!(tokens(&Input { text: Some(&long), ..Default::default() }).len() <= MAX_TOKENS);
    }

    #[test]
    fn filler_in_front_does_not_push_the_end_out() {
        let filler: String = (0..20_000).map(|i| format!("f{i:05} ")).collect();
        let text = format!("{filler} viagra lottery winner");
        // The window keeps the end of an over-long text.
        assert!(window(&text).ends_with("viagra lottery winner"));
        assert!(window(&text).len() <= MAX_TEXT + 1);
        // The sample is spread over the text, not its first MAX_TOKENS words.
        let t = tokens(&Input { text: Some(&text), ..Default::default() });
        assert_eq!(t.len(), MAX_TOKENS);
        assert!(t.iter().any(|w| w.starts_with("f19")), "only the front was sampled");
    }

    #[test]
    fn all_caps_subject_and_missing_parts() {
        let t = tokens(&Input { subject: Some("ACT NOW LIMITED OFFER"), ..Default::default() });
        assert!(t.contains(&"subject:*all-caps*".to_string()));
        assert!(t.contains(&"*no-text*".to_string()));
        // A cut in the middle of a multi-byte character must not panic.
        let s = "é".repeat(MAX_TEXT);
        tokens(&Input { text: Some(&s), ..Default::default() });
    }
}
