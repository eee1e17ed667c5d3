//! Owned results of each check, independent of mail-auth's borrowed output types.

/// RFC 8601 result words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    None,
    TempError,
    PermError,
}

impl Status {
    /// The RFC 8601 word.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::SoftFail => "softfail",
            Status::Neutral => "neutral",
            Status::None => "none",
            Status::TempError => "temperror",
            Status::PermError => "permerror",
        }
    }
}

/// SPF result for one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spf {
    pub status: Status,
    /// The domain checked: of MAIL FROM, or the HELO name.
    pub domain: String,
    /// True when this is the HELO identity (`smtp.helo`), false for MAIL FROM (`smtp.mailfrom`).
    pub helo: bool,
    /// The domain's explanation of a `fail` (its `exp=`), for the reply that refuses the mail.
    pub explanation: Option<String>,
}

/// One DKIM signature's verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dkim {
    pub status: Status,
    /// d= (empty when the signature could not be parsed).
    pub domain: String,
    /// s=.
    pub selector: String,
    /// Why it did not pass, for the header's comment and the logs.
    pub reason: Option<String>,
}

/// Published DMARC policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    None,
    Quarantine,
    Reject,
}

/// DMARC evaluation of the header From domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dmarc {
    pub status: Status,
    /// The From domain.
    pub domain: String,
    pub policy: Policy,
}

/// ARC chain validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arc {
    /// `none` (no ARC fields at all), `pass` or `fail` — the only words RFC 8617 §4.4 allows.
    pub status: Status,
    /// Why a chain failed, for the header's comment.
    pub reason: Option<String>,
    /// Number of ARC sets.
    pub instances: u32,
    /// The d= of the newest ARC-Seal, when there is a chain: who sealed it last.
    pub sealer: Option<String>,
}

/// iprev: the client's PTR names resolve back to its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iprev {
    pub status: Status,
    pub hostname: Option<String>,
}

/// The message-level checks, computed together (DMARC needs the DKIM results).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageResults {
    pub dkim: Vec<Dkim>,
    pub dmarc: Option<Dmarc>,
    pub arc: Arc,
}
