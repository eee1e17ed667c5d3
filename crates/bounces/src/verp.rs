//! VERP return paths: `<prefix>+<queue id>-<tag>@<domain>` (queue ids are upper-case hex, matched
//! in any case). The tag is the first 40 bits of
//! HMAC-SHA256(key, queue id) in hex, with a key kept in the spool directory: a bounce to an
//! address with a wrong tag is not ours (refused at RCPT), so a stranger who guesses queue ids
//! cannot have recipients suppressed.

use std::io::Write;
use std::path::Path;

/// The key file's name in the spool directory.
pub const KEY_FILE: &str = "verp.key";

/// Hex digits of the tag (40 bits: enough against guessing by SMTP, short in a local part).
const TAG_HEX: usize = 10;

pub struct Verp {
    domain: String,
    prefix: String,
    key: ring::hmac::Key,
}

impl Verp {
    /// The VERP scheme for `domain` with the local-part `prefix`, keyed by `<spool>/verp.key`
    /// (made on first use, 32 random octets, mode 0600).
    pub fn open(spool: &Path, domain: &str, prefix: &str) -> std::io::Result<Verp> {
        let path = spool.join(KEY_FILE);
        let secret = match std::fs::read(&path) {
            Ok(k) if k.len() >= 32 => k,
            Ok(_) => return Err(std::io::Error::other(format!("{}: shorter than 32 octets", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = vec![0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
                    .map_err(|_| std::io::Error::other("no randomness for the VERP key"))?;
                std::fs::create_dir_all(spool)?;
                let tmp = spool.join(format!("{KEY_FILE}.tmp"));
                let mut f = open_private(&tmp)?;
                f.write_all(&k)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                k
            }
            Err(e) => return Err(e),
        };
        Ok(Verp::with_key(domain, prefix, &secret))
    }

    pub fn with_key(domain: &str, prefix: &str, secret: &[u8]) -> Verp {
        Verp {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            prefix: prefix.to_string(),
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        }
    }

    fn tag(&self, id: &str) -> String {
        let t = ring::hmac::sign(&self.key, id.as_bytes());
        t.as_ref()[..TAG_HEX / 2].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The return path for queue id `id`.
    pub fn address(&self, id: &str) -> String {
        format!("{}+{id}-{}@{}", self.prefix, self.tag(id), self.domain)
    }

    /// Whether `addr` is in the bounce domain at all (ours to answer for, tag or not).
    pub fn is_ours(&self, addr: &str) -> bool {
        addr.rsplit_once('@').is_some_and(|(_, d)| d.trim_end_matches('.').eq_ignore_ascii_case(&self.domain))
    }

    /// The queue id a return path of ours stands for; `None` when it is not one, or its tag
    /// is wrong.
    pub fn queue_id(&self, addr: &str) -> Option<String> {
        if !self.is_ours(addr) {
            return None;
        }
        let (local, _) = addr.rsplit_once('@')?;
        let rest = local.strip_prefix(&self.prefix)?.strip_prefix('+')?;
        let (id, tag) = rest.rsplit_once('-')?;
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        // Compared without an early exit: the time taken says nothing about the tag.
        // Queue ids are upper-case hex; some systems fold the local part to lower case.
        let id = id.to_ascii_uppercase();
        let want = self.tag(&id);
        let tag = tag.to_ascii_lowercase();
        let same = want.len() == tag.len() && want.bytes().zip(tag.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        same.then_some(id)
    }
}

fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_forgeries_do_not() {
        let v = Verp::with_key("Bounces.Example.TEST.", "bounces", b"0123456789abcdef0123456789abcdef");
        let a = v.address("00066162F627958F");
        assert!(a.starts_with("bounces+00066162F627958F-") && a.ends_with("@bounces.example.test"), "{a}");
        assert_eq!(v.queue_id(&a).as_deref(), Some("00066162F627958F"));
        assert_eq!(v.queue_id(&a.to_lowercase()).as_deref(), Some("00066162F627958F"), "folded to lower case");
        assert_eq!(
            v.queue_id(&a.replace("@bounces.example.test", "@BOUNCES.example.test.")).as_deref(),
            Some("00066162F627958F")
        );
        // Another id with this tag, another key, another prefix, other domains: not ours.
        let (_, tag) = a.split_once('-').unwrap();
        assert_eq!(v.queue_id(&format!("bounces+00066162F627958E-{tag}")), None);
        let other = Verp::with_key("bounces.example.test", "bounces", b"another key, another tag.........");
        assert_eq!(other.queue_id(&a), None);
        assert_eq!(v.queue_id(&a.replace("bounces+", "returns+")), None);
        assert_eq!(v.queue_id(&a.replace("example.test", "example.org")), None);
        for bad in [
            "bounces@bounces.example.test",
            "bounces+-@bounces.example.test",
            "bounces+x@bounces.example.test",
            "@",
            "",
        ] {
            assert_eq!(v.queue_id(bad), None, "{bad}");
        }
        assert!(v.is_ours("anything@bounces.example.test") && !v.is_ours("x@example.test"));
    }

    #[test]
    fn the_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = Verp::open(dir.path(), "b.test", "bounces").unwrap().address("ABC");
        let b = Verp::open(dir.path(), "b.test", "bounces").unwrap().address("ABC");
        assert_eq!(a, b);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
