//! The checks themselves (through mail-auth over the gateway's resolver) and the lazy,
//! once-per-transaction cache of their results.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use mail_auth::common::verify::VerifySignature;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::{
    AuthenticatedMessage, DkimResult, DmarcResult, IprevResult, MessageAuthenticator, Parameters, SpfResult,
};

use crate::results::{self, Dkim, Dmarc, Iprev, MessageResults, Policy, Spf, Status};

/// Runs the checks. One per gateway generation; cheap to share.
pub struct Authenticator {
    inner: MessageAuthenticator,
    /// Our host name: SPF's `%{r}` macro and the receiving host of explanations.
    hostname: String,
    /// Upper bound for one check, whatever the resolver's retries add up to (RFC 7208 §4.6.4:
    /// at least 20 s for SPF; a client waits minutes for the reply to DATA).
    deadline: Duration,
    /// SPF records already parsed, by their text.
    spf_records: crate::spf::RecordCache,
    /// DKIM keys and DMARC policies already looked up and parsed, until their TTL ends.
    txt: crate::TxtCache,
}

impl Authenticator {
    pub fn new(resolver: TokioResolver, hostname: &str, deadline: Duration) -> Authenticator {
        Authenticator {
            inner: MessageAuthenticator(resolver),
            hostname: hostname.to_string(),
            deadline,
            spf_records: Default::default(),
            txt: crate::TxtCache::new(crate::TXT_CACHE_ENTRIES, crate::TXT_CACHE_BYTES),
        }
    }

    /// mail-auth's authenticator over our resolver (for sealing).
    pub(crate) fn inner(&self) -> &MessageAuthenticator {
        &self.inner
    }

    /// The parsed TXT records mail-auth looks up (for sealing, which verifies the chain).
    pub(crate) fn txt_cache(&self) -> &crate::TxtCache {
        &self.txt
    }

    /// SPF of `sender` (MAIL FROM), or of the HELO name for the null sender (RFC 7208 §2.4),
    /// with the result in the form DMARC takes it.
    pub async fn spf(&self, ip: IpAddr, helo: &str, sender: &str) -> (Spf, mail_auth::SpfOutput) {
        let spf = self.check_spf(ip, helo, sender).await;
        let dmarc = mail_auth::SpfOutput::new(spf.domain.clone()).with_result(match spf.status {
            Status::Pass => SpfResult::Pass,
            Status::Fail => SpfResult::Fail,
            Status::SoftFail => SpfResult::SoftFail,
            Status::Neutral => SpfResult::Neutral,
            Status::None => SpfResult::None,
            Status::TempError => SpfResult::TempError,
            Status::PermError => SpfResult::PermError,
        });
        (spf, dmarc)
    }

    /// SPF of the HELO identity.
    pub async fn spf_helo(&self, ip: IpAddr, helo: &str) -> Spf {
        Spf { helo: true, ..self.check_spf(ip, helo, "").await }
    }

    /// Our RFC 7208 evaluator ([`crate::spf`]), bounded by the deadline.
    async fn check_spf(&self, ip: IpAddr, helo: &str, sender: &str) -> Spf {
        let id = crate::spf::Identity { ip, helo, sender, receiver: &self.hostname };
        let out =
            match tokio::time::timeout(self.deadline, crate::spf::check_host(&self.inner.0, &self.spf_records, &id))
                .await
            {
                Ok(out) => out,
                Err(_) => {
                    let domain = sender.rsplit_once('@').map_or(helo, |(_, d)| d);
                    crate::spf::SpfOutcome {
                        result: crate::spf::SpfVerdict::TempError,
                        domain: domain.to_string(),
                        explanation: None,
                    }
                }
            };
        use crate::spf::SpfVerdict as V;
        let status = match out.result {
            V::Pass => Status::Pass,
            V::Fail => Status::Fail,
            V::SoftFail => Status::SoftFail,
            V::Neutral => Status::Neutral,
            V::None => Status::None,
            V::TempError => Status::TempError,
            V::PermError => Status::PermError,
        };
        Spf { status, domain: out.domain, helo: sender.is_empty(), explanation: out.explanation }
    }

    pub async fn iprev(&self, ip: IpAddr) -> Iprev {
        match tokio::time::timeout(self.deadline, self.inner.verify_iprev(ip)).await {
            Ok(out) => Iprev {
                status: match out.result {
                    IprevResult::Pass => Status::Pass,
                    IprevResult::Fail(_) => Status::Fail,
                    IprevResult::TempError(_) => Status::TempError,
                    IprevResult::PermError(_) => Status::PermError,
                    IprevResult::None => Status::None,
                },
                hostname: out.ptr.as_ref().and_then(|p| p.first()).map(|h| h.trim_end_matches('.').to_string()),
            },
            Err(_) => Iprev { status: Status::TempError, hostname: None },
        }
    }

    /// DKIM (the first [`DKIM_SIGNATURES`] signatures), ARC and DMARC of a message. `spf` is
    /// the MAIL FROM result that DMARC aligns with; `mail_from_domain` its domain.
    pub async fn message(&self, raw: &[u8], mail_from_domain: &str, spf: &mail_auth::SpfOutput) -> MessageResults {
        let Some((msg, refused)) = parse(raw) else {
            let arc = results::Arc { status: Status::None, reason: None, instances: 0, sealer: None };
            return MessageResults { dkim: vec![], dmarc: None, arc };
        };
        let from_domain = msg.from().rsplit_once('@').map_or("", |(_, d)| d).to_lowercase();
        let refused_chain = chain_refused(&msg);
        let work = async {
            let keys = crate::keys::prefetch(&self.inner.0, &self.txt, &msg, refused_chain.is_none()).await;
            let dkim_out = self.inner.verify_dkim(Parameters::new(&msg).with_txt_cache(&keys)).await;
            let arc_out = match &refused_chain {
                None => Some(self.inner.verify_arc(Parameters::new(&msg).with_txt_cache(&keys)).await),
                Some(_) => None,
            };
            let dmarc_out = if from_domain.is_empty() {
                None
            } else {
                // The walk's names, absent ones included, decided before mail-auth asks.
                let a_label = mail_auth::common::to_a_label(&from_domain);
                let decided = crate::policies::prefetch(&self.inner.0, &self.txt, &a_label).await;
                let policies = crate::keys::MessageKeys::new(&self.txt, decided);
                let params = DmarcParameters::new(&msg, &dkim_out, mail_from_domain, spf);
                Some(self.inner.verify_dmarc(Parameters::new(params).with_txt_cache(&policies)).await)
            };
            let dkim = dkim_out
                .iter()
                .map(|o| {
                    let (status, reason) = dkim_status(o.result());
                    let (domain, selector) = o
                        .signature()
                        .map_or((String::new(), String::new()), |s| (s.d.clone(), s.selector().to_string()));
                    Dkim { status, domain, selector, reason }
                })
                .chain(refused)
                .collect();
            let arc = match (&arc_out, &refused_chain) {
                (Some(out), _) => {
                    let (status, reason) = arc_status(out.result(), has_arc_fields(raw));
                    results::Arc {
                        status,
                        reason,
                        instances: out.sets().len() as u32,
                        sealer: out.sets().last().map(|s| s.seal.header.d.clone()),
                    }
                }
                (None, why) => results::Arc {
                    status: Status::Fail,
                    reason: why.clone(),
                    instances: arc_sets(&msg) as u32,
                    sealer: None,
                },
            };
            let dmarc = dmarc_out.map(|d| Dmarc {
                status: match d.result() {
                    DmarcResult::Pass => Status::Pass,
                    DmarcResult::Fail(_) => Status::Fail,
                    DmarcResult::TempError(_) => Status::TempError,
                    DmarcResult::PermError(_) => Status::PermError,
                    DmarcResult::None => Status::None,
                },
                domain: d.domain().to_string(),
                policy: match d.policy() {
                    mail_auth::dmarc::Policy::Reject => Policy::Reject,
                    mail_auth::dmarc::Policy::Quarantine => Policy::Quarantine,
                    _ => Policy::None,
                },
            });
            MessageResults { dkim, dmarc, arc }
        };
        match tokio::time::timeout(self.deadline, work).await {
            Ok(r) => r,
            Err(_) => MessageResults {
                dkim: vec![Dkim {
                    status: Status::TempError,
                    domain: String::new(),
                    selector: String::new(),
                    reason: Some("timed out".into()),
                }],
                dmarc: None,
                arc: match has_arc_fields(raw) {
                    true => results::Arc {
                        status: Status::Fail,
                        reason: Some("timed out".into()),
                        instances: 0,
                        sealer: None,
                    },
                    false => results::Arc { status: Status::None, reason: None, instances: 0, sealer: None },
                },
            },
        }
    }
}

/// A chain's result as RFC 8617 §4.4 allows it: `none` only when the message has no ARC
/// fields, `pass`, or `fail` — whatever else the library says (neutral for a chain it could
/// not parse, permerror, temperror) is a `fail`, with its reason.
fn arc_status(r: &DkimResult, has_fields: bool) -> (Status, Option<String>) {
    match (dkim_status(r), has_fields) {
        ((Status::Pass, _), _) => (Status::Pass, None),
        ((Status::None, _), false) => (Status::None, None),
        ((Status::None, _), true) => (Status::Fail, Some("ARC header fields without a chain".into())),
        ((_, reason), _) => (Status::Fail, reason),
    }
}

/// Whether the header section has any ARC field (ARC-Seal, ARC-Message-Signature or
/// ARC-Authentication-Results).
pub(crate) fn has_arc_fields(raw: &[u8]) -> bool {
    let end = memchr::memmem::find(raw, b"\r\n\r\n").map_or(raw.len(), |p| p + 2);
    let head = &raw[..end];
    let line_starts = std::iter::once(0).chain(memchr::memchr_iter(b'\n', head).map(|i| i + 1));
    line_starts.into_iter().any(|at| head.get(at..at + 4).is_some_and(|n| n.eq_ignore_ascii_case(b"arc-")))
}

/// DKIM signatures verified in a message at most, the first in header order (the latest
/// added). RFC 6376 §8.4: a verifier may limit them — each costs an RSA verification (an
/// 8192-bit key's ~16 times a 2048-bit one's), and a 512 KiB header section holds a thousand
/// signatures of a sender's making. Mail that passed a few mailing lists carries a handful.
pub const DKIM_SIGNATURES: usize = 10;

/// Field names a signature's `h=` may list for it to be verified; a longer list is a
/// `permerror` (a DKIM signature) or a failed chain (an ARC message signature), unverified.
/// mail-auth picks each listed name's field by comparing it with every name listed before and
/// every field of the header: a signature listing 40 000 names, in a 200 KiB message, took 2.3 s
/// of CPU (measured through the gateway). Signers list ten to thirty, fifty when they
/// over-sign every field.
pub const SIGNED_FIELDS: usize = 100;

/// ARC sets a chain may have for it to be validated; a longer one is a `fail` without a
/// verification (RFC 8617 §5.2 sets 50 as the most a chain may have). Validating a chain
/// verifies every seal and the latest message signature, and each seal covers the sets below
/// it: with 50 sets of a sender's making, 51 RSA verifications and 1 275 set hashes a message
/// (measured through the gateway: 15 ms of CPU a message with 4096-bit keys, where a message
/// with one set takes 1.5 ms). A message crosses a handful of ARC-sealing hops, not ten.
pub const ARC_SETS: usize = 10;

/// The number of ARC sets `msg` has (the most of its seals, message signatures and results).
pub(crate) fn arc_sets(msg: &AuthenticatedMessage<'_>) -> usize {
    msg.as_headers.len().max(msg.ams_headers.len()).max(msg.aar_headers.len())
}

/// Why `msg`'s ARC chain is not validated: it has more than [`ARC_SETS`] sets, or a message
/// signature lists more than [`SIGNED_FIELDS`] field names.
pub(crate) fn chain_refused(msg: &AuthenticatedMessage<'_>) -> Option<String> {
    let n = arc_sets(msg);
    if n > ARC_SETS {
        return Some(format!("ARC chain of {n} sets, more than the {ARC_SETS} validated"));
    }
    msg.ams_headers.iter().map(|h| &h.header).find(|s| s.h.len() > SIGNED_FIELDS).map(|s| {
        format!("ARC-Message-Signature i={} lists {} field names, more than the {SIGNED_FIELDS} taken", s.i, s.h.len())
    })
}

/// The message as mail-auth reads it, its DKIM signatures cut to [`DKIM_SIGNATURES`] (the
/// body hashes are bounded already: with `l=` refused there are at most four kinds), and the
/// results of those among them not verified: their `h=` lists more than [`SIGNED_FIELDS`]
/// names.
pub(crate) fn parse(raw: &[u8]) -> Option<(AuthenticatedMessage<'_>, Vec<Dkim>)> {
    let mut msg = AuthenticatedMessage::parse(raw)?;
    msg.dkim_headers.truncate(DKIM_SIGNATURES);
    let mut refused = vec![];
    msg.dkim_headers.retain(|h| {
        let s = &h.header;
        if s.h.len() <= SIGNED_FIELDS {
            return true;
        }
        refused.push(Dkim {
            status: Status::PermError,
            domain: s.d.clone(),
            selector: s.s.clone(),
            reason: Some(format!("h= lists {} field names, more than the {SIGNED_FIELDS} taken", s.h.len())),
        });
        false
    });
    Some((msg, refused))
}

fn dkim_status(r: &DkimResult) -> (Status, Option<String>) {
    match r {
        DkimResult::Pass => (Status::Pass, None),
        DkimResult::Neutral(e) => (Status::Neutral, Some(e.to_string())),
        DkimResult::Fail(e) => (Status::Fail, Some(e.to_string())),
        DkimResult::PermError(e) => (Status::PermError, Some(e.to_string())),
        DkimResult::TempError(e) => (Status::TempError, Some(e.to_string())),
        DkimResult::None => (Status::None, None),
    }
}

/// The checks of one SMTP session, computed on first use and kept until the data they depend
/// on changes (a new HELO, a new transaction, a new message).
pub struct AuthSession {
    auth: Arc<Authenticator>,
    ip: IpAddr,
    helo: Option<String>,
    /// MAIL FROM of the current transaction ("" for the null sender); none outside one.
    mail_from: Option<String>,
    /// SPF of MAIL FROM with mail-auth's output, which DMARC needs.
    spf: Option<(Spf, mail_auth::SpfOutput)>,
    spf_helo: Option<Spf>,
    /// iprev depends only on the IP: kept for the whole session.
    iprev: Option<Iprev>,
    /// The message of the transaction, once DATA is complete.
    message: Option<Arc<Vec<u8>>>,
    results: Option<MessageResults>,
}

impl AuthSession {
    pub fn new(auth: Arc<Authenticator>, ip: IpAddr) -> AuthSession {
        AuthSession {
            auth,
            ip,
            helo: None,
            mail_from: None,
            spf: None,
            spf_helo: None,
            iprev: None,
            message: None,
            results: None,
        }
    }

    /// HELO/EHLO: the HELO identity and every transaction result change.
    pub fn set_helo(&mut self, helo: &str) {
        self.helo = Some(helo.to_string());
        self.spf_helo = None;
        self.end_transaction();
    }

    /// MAIL FROM: a new transaction.
    pub fn begin_transaction(&mut self, mail_from: &str) {
        self.end_transaction();
        self.mail_from = Some(mail_from.to_string());
    }

    pub fn end_transaction(&mut self) {
        self.mail_from = None;
        self.spf = None;
        self.message = None;
        self.results = None;
    }

    /// The complete message (DATA/BDAT done).
    pub fn set_message(&mut self, raw: Arc<Vec<u8>>) {
        self.message = Some(raw);
        self.results = None;
    }

    /// The message is decided: drop it (its results stay until the next transaction).
    pub fn end_message(&mut self) {
        self.message = None;
    }

    /// SPF of MAIL FROM; none outside a transaction.
    pub async fn spf(&mut self) -> Option<&Spf> {
        if self.spf.is_none() {
            let from = self.mail_from.as_deref()?;
            let helo = self.helo.as_deref().unwrap_or("");
            self.spf = Some(self.auth.spf(self.ip, helo, from).await);
        }
        self.spf.as_ref().map(|(s, _)| s)
    }

    /// SPF of the HELO name; none before HELO.
    pub async fn spf_helo(&mut self) -> Option<&Spf> {
        if self.spf_helo.is_none() {
            let helo = self.helo.clone()?;
            self.spf_helo = Some(self.auth.spf_helo(self.ip, &helo).await);
        }
        self.spf_helo.as_ref()
    }

    pub async fn iprev(&mut self) -> &Iprev {
        if self.iprev.is_none() {
            self.iprev = Some(self.auth.iprev(self.ip).await);
        }
        self.iprev.as_ref().expect("just computed")
    }

    /// DKIM, ARC and DMARC of the message; none before the message is complete.
    pub async fn message(&mut self) -> Option<&MessageResults> {
        if self.results.is_none() {
            let raw = self.message.clone()?;
            self.spf().await;
            let from = self.mail_from.clone().unwrap_or_default();
            let domain = from.rsplit_once('@').map_or(self.helo.as_deref().unwrap_or(""), |(_, d)| d).to_string();
            let spf_out =
                self.spf.as_ref().map(|(_, o)| o.clone()).unwrap_or_else(|| mail_auth::SpfOutput::new(domain.clone()));
            self.results = Some(self.auth.message(&raw, &domain, &spf_out).await);
        }
        self.results.as_ref()
    }

    /// Runs the checks the operator wants in every header, then renders the header value from
    /// everything computed so far; none when nothing was.
    pub async fn header(
        &mut self,
        authserv_id: &str,
        always_spf: bool,
        always_message: bool,
        always_iprev: bool,
    ) -> Option<String> {
        if always_spf {
            self.spf().await;
        }
        if always_message {
            self.message().await;
        }
        if always_iprev {
            self.iprev().await;
        }
        let spf: Vec<&Spf> = self.spf.as_ref().map(|(s, _)| s).into_iter().chain(self.spf_helo.as_ref()).collect();
        if spf.is_empty() && self.iprev.is_none() && self.results.is_none() {
            return None;
        }
        Some(crate::header::authentication_results(
            authserv_id,
            self.ip,
            &spf,
            self.iprev.as_ref(),
            self.results.as_ref(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::has_arc_fields;

    /// The line-start scan against the definition (split into lines, look at each), for
    /// fields anywhere in the header section, not in the body, any case, folded, and short
    /// lines at every place.
    #[test]
    fn arc_fields_found_where_the_definition_finds_them() {
        let reference = |raw: &[u8]| {
            let end = raw.windows(4).position(|w| w == b"\r\n\r\n").map_or(raw.len(), |p| p + 2);
            raw[..end].split(|b| *b == b'\n').any(|l| l.len() >= 4 && l[..4].eq_ignore_ascii_case(b"arc-"))
        };
        let parts: [&[u8]; 9] = [
            b"ARC-Seal: i=1\r\n",
            b"arc-message-signature: x\r\n",
            b"Subject: arc-not-a-field\r\n",
            b" arc-folded\r\n",
            b"ar\r\n",
            b"c-\r\n",
            b"\r\n",
            b"body\r\n",
            b"X: y\r\n",
        ];
        for a in 0..parts.len() {
            for b in 0..parts.len() {
                for c in 0..parts.len() {
                    let raw = [parts[a], parts[b], parts[c]].concat();
                    assert_eq!(has_arc_fields(&raw), reference(&raw), "{:?}", String::from_utf8_lossy(&raw));
                }
            }
        }
        assert!(has_arc_fields(b"ARC-Seal: i=1\r\n\r\nbody\r\n"));
        assert!(!has_arc_fields(b"Subject: x\r\n\r\nARC-Seal: in the body\r\n"));
    }
}
