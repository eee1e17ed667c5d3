//! The EHLO response as the outbound client sees it: which extensions the server offers.

use crate::Reply;

/// Extensions a remote server advertised in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub starttls: bool,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    pub chunking: bool,
    pub enhanced_status_codes: bool,
    /// DSN (RFC 3461): the server takes RET/ENVID/NOTIFY/ORCPT and reports from then on.
    pub dsn: bool,
    /// SIZE limit, if advertised with a value (0 means "no fixed limit").
    pub size: Option<u64>,
    /// AUTH mechanisms offered (RFC 4954), upper case.
    pub auth: Vec<String>,
    /// REQUIRETLS (RFC 8689): the server takes messages that must travel over verified TLS.
    pub requiretls: bool,
}

impl Extensions {
    /// Reads the extension keywords from an EHLO reply (first line is the greeting).
    pub fn from_reply(reply: &Reply) -> Extensions {
        let mut x = Extensions::default();
        for line in reply.text.split('\n').skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "PIPELINING" => x.pipelining = true,
                "STARTTLS" => x.starttls = true,
                "8BITMIME" => x.eightbitmime = true,
                "SMTPUTF8" => x.smtputf8 = true,
                "CHUNKING" => x.chunking = true,
                "ENHANCEDSTATUSCODES" => x.enhanced_status_codes = true,
                "DSN" => x.dsn = true,
                "REQUIRETLS" => x.requiretls = true,
                "AUTH" => x.auth = words.map(|m| m.to_ascii_uppercase()).collect(),
                "SIZE" => x.size = Some(words.next().and_then(|v| v.parse().ok()).unwrap_or(0)),
                _ => {}
            }
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keywords() {
        let r = Reply::plain(250, "mx Hello\nPIPELINING\nsize 1000\nSTARTTLS\n8BITMIME\nAUTH login Plain");
        let x = Extensions::from_reply(&r);
        assert!(x.pipelining && x.starttls && x.eightbitmime && !x.smtputf8);
        assert_eq!(x.auth, ["LOGIN", "PLAIN"]);
        assert_eq!(x.size, Some(1000));
    }
}
