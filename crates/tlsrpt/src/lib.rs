//! TLS reporting (RFC 8460): the results of outbound TLS sessions made under a recipient
//! domain's policy (MTA-STS or DANE), counted per policy domain and UTC day, kept under the
//! spool directory (`tlsrpt/<day>/<domain>.json`, so a restart loses at most what was not yet
//! flushed), and rendered as the report RFC 8460 defines: JSON (mail-auth's structures),
//! gzip'd, in a `multipart/report` message or POSTed over HTTPS.
//!
//! This crate owns the counting, the files and the rendering. It must not know how sessions
//! are made (the delivery agent says what happened), nor how a report message reaches the
//! queue, nor DNS: the caller looks up the `rua` and hands the message to the cleanup stage.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mail_auth::report::tlsrpt::{DateRange, FailureDetails, Policy, PolicyDetails, Summary};
pub use mail_auth::report::tlsrpt::{PolicyType, ResultType, TlsReport};
use serde::{Deserialize, Serialize};

/// Policy domains counted per day at most (more are not counted that day).
const MAX_DOMAINS_PER_DAY: usize = 100_000;
/// Distinct policies (strings, MX hosts) per domain and day at most.
const MAX_POLICIES: usize = 32;
/// Distinct failure details per policy and day at most (further failures are counted in the
/// summary only).
const MAX_DETAILS: usize = 100;
/// An HTTPS report gets this long.
const POST_TIMEOUT: Duration = Duration::from_secs(60);

/// Which policy applied to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    Sts,
    Tlsa,
}

/// The policy a session was made under, as a report names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PolicyRef {
    /// The recipient domain whose policy it is.
    pub domain: String,
    pub kind: Kind,
    /// The policy's text: an MTA-STS policy's lines, or the TLSA records in presentation form.
    pub strings: Vec<String>,
    /// The MX patterns of an MTA-STS policy, or the host the TLSA records belong to.
    pub mx: Vec<String>,
}

/// Why a session under a policy failed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Failure {
    pub result: ResultType,
    pub receiving_mx: Option<String>,
    pub receiving_ip: Option<IpAddr>,
    pub sending_ip: Option<IpAddr>,
    /// A few words for the domain's operator (the error the session ended with).
    pub detail: Option<String>,
}

/// One policy's counts for a day.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Counts {
    success: u64,
    failure: u64,
    /// Distinct failures and how often each happened.
    details: Vec<(Failure, u64)>,
}

/// What one policy domain's sessions of one day came to (the file's content).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct DomainDay {
    policies: Vec<(PolicyRef, Counts)>,
}

#[derive(Default)]
struct State {
    /// Day (`YYYY-MM-DD`, UTC) → domain → counts.
    days: BTreeMap<String, HashMap<String, DomainDay>>,
    /// Counted since the last flush.
    dirty: std::collections::HashSet<(String, String)>,
}

/// The counts of every policy domain, shared by the delivery agent (which records) and the
/// report sender (which reads and removes).
pub struct Reports {
    dir: PathBuf,
    state: Mutex<State>,
    /// Held across a flush or a removal, so that files are written in the order their
    /// snapshots were taken and a removed report is not written back by a flush in flight.
    files: Mutex<()>,
}

/// Failures of reading, writing or sending reports.
#[derive(Debug, thiserror::Error)]
pub enum TlsRptError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("HTTPS report to {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("HTTPS report to {url}: status {status}")]
    Status { url: String, status: u16 },
    #[error("HTTPS report to {url}: no address for its host")]
    NoAddress { url: String },
    #[error("report message: {0}")]
    Message(std::io::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsRptError + '_ {
    move |source| TlsRptError::Io { path: path.to_path_buf(), source }
}

/// A UTC day as `YYYY-MM-DD`, from seconds since the epoch.
pub fn day_of(unix: u64) -> String {
    let d = mail_parser::DateTime::from_timestamp(unix as i64);
    format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)
}

/// Today (UTC).
pub fn today() -> String {
    day_of(now())
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// The first second of `day` (`YYYY-MM-DD`), or `None` for anything else.
fn day_start(day: &str) -> Option<i64> {
    let d = mail_parser::DateTime::parse_rfc3339(&format!("{day}T00:00:00Z"))?;
    (day_of(d.to_timestamp() as u64) == day).then(|| d.to_timestamp())
}

/// A name safe as a file name: a domain in A-labels (letters, digits, `-`, `.`, `_`), never
/// `.` or `..` or empty.
fn file_safe(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 253
        && !domain.starts_with('.')
        && domain.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

impl Reports {
    /// The counts kept under `dir` (created when missing).
    pub fn open(dir: &Path) -> Result<Reports, TlsRptError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut state = State::default();
        for day in std::fs::read_dir(dir).map_err(io(dir))? {
            let day = day.map_err(io(dir))?;
            let name = day.file_name().to_string_lossy().into_owned();
            if day_start(&name).is_none() {
                continue;
            }
            let path = day.path();
            for f in std::fs::read_dir(&path).map_err(io(&path))? {
                let f = f.map_err(io(&path))?;
                let fname = f.file_name().to_string_lossy().into_owned();
                let Some(domain) = fname.strip_suffix(".json") else { continue };
                let p = f.path();
                let text = std::fs::read(&p).map_err(io(&p))?;
                match serde_json::from_slice::<DomainDay>(&text) {
                    Ok(dd) => {
                        state.days.entry(name.clone()).or_default().insert(domain.to_string(), dd);
                    }
                    // A file cut short by a crash: its counts are lost, the rest are not.
                    Err(e) => tracing::warn!(file = %p.display(), "TLS report counts unreadable, skipped: {e}"),
                }
            }
        }
        Ok(Reports { dir: dir.to_path_buf(), state: Mutex::new(state), files: Mutex::new(()) })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one session made under `policy`: `None` a success, else how it failed.
    pub fn record(&self, policy: &PolicyRef, failure: Option<Failure>) {
        self.record_on(&today(), policy, failure)
    }

    fn record_on(&self, day: &str, policy: &PolicyRef, failure: Option<Failure>) {
        let domain = policy.domain.to_ascii_lowercase();
        let mut st = self.state();
        let days = st.days.entry(day.to_string()).or_default();
        if !days.contains_key(&domain) && days.len() >= MAX_DOMAINS_PER_DAY {
            return;
        }
        let dd = days.entry(domain.clone()).or_default();
        let counts = match dd.policies.iter().position(|(p, _)| p == policy) {
            Some(i) => &mut dd.policies[i].1,
            None if dd.policies.len() < MAX_POLICIES => {
                dd.policies.push((policy.clone(), Counts::default()));
                &mut dd.policies.last_mut().expect("just pushed").1
            }
            None => return,
        };
        match failure {
            None => counts.success += 1,
            Some(f) => {
                counts.failure += 1;
                if let Some(i) = counts.details.iter().position(|(d, _)| *d == f) {
                    counts.details[i].1 += 1;
                } else if counts.details.len() < MAX_DETAILS {
                    counts.details.push((f, 1));
                }
            }
        }
        st.dirty.insert((day.to_string(), domain));
    }

    /// Writes what was counted since the last flush (each file replaced whole by a rename).
    pub fn flush(&self) -> Result<(), TlsRptError> {
        let _files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let files: Vec<(String, String, Vec<u8>)> = {
            let mut st = self.state();
            let dirty: Vec<(String, String)> = st.dirty.drain().collect();
            dirty
                .into_iter()
                .filter_map(|(day, domain)| {
                    let json = serde_json::to_vec(st.days.get(&day)?.get(&domain)?).expect("counts serialise");
                    Some((day, domain, json))
                })
                .collect()
        };
        for (day, domain, json) in files {
            if !file_safe(&domain) {
                continue; // counted in memory only
            }
            let dir = self.dir.join(&day);
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            let tmp = dir.join(format!(".{domain}.tmp"));
            std::fs::write(&tmp, &json).map_err(io(&tmp))?;
            let path = dir.join(format!("{domain}.json"));
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
        }
        Ok(())
    }

    /// Days with counts, oldest first.
    pub fn days(&self) -> Vec<String> {
        self.state().days.keys().cloned().collect()
    }

    /// The policy domains with counts on `day`.
    pub fn domains(&self, day: &str) -> Vec<String> {
        let mut v: Vec<String> = self.state().days.get(day).map(|d| d.keys().cloned().collect()).unwrap_or_default();
        v.sort();
        v
    }

    /// The report of `domain` for `day`, by `org` (organization-name), `contact`
    /// (contact-info) and `submitter` (our host name, part of the report id).
    pub fn report(&self, day: &str, domain: &str, org: &str, contact: &str, submitter: &str) -> Option<TlsReport> {
        let start = day_start(day)?;
        let dd = self.state().days.get(day)?.get(domain)?.clone();
        let policies = dd
            .policies
            .into_iter()
            .map(|(p, c)| Policy {
                policy: PolicyDetails {
                    policy_type: match p.kind {
                        Kind::Sts => PolicyType::Sts,
                        Kind::Tlsa => PolicyType::Tlsa,
                    },
                    policy_string: p.strings,
                    policy_domain: p.domain,
                    mx_host: p.mx,
                },
                summary: Summary {
                    total_success: c.success.min(u32::MAX as u64) as u32,
                    total_failure: c.failure.min(u32::MAX as u64) as u32,
                },
                failure_details: c
                    .details
                    .into_iter()
                    .map(|(f, n)| FailureDetails {
                        result_type: f.result,
                        sending_mta_ip: f.sending_ip,
                        receiving_mx_hostname: f.receiving_mx,
                        receiving_mx_helo: None,
                        receiving_ip: f.receiving_ip,
                        failed_session_count: n.min(u32::MAX as u64) as u32,
                        additional_information: f.detail,
                        failure_reason_code: None,
                    })
                    .collect(),
            })
            .collect();
        Some(TlsReport {
            organization_name: Some(org.to_string()),
            date_range: DateRange::from_timestamps(start, start + 86_399),
            contact_info: Some(contact.to_string()),
            report_id: format!("{day}.{domain}@{submitter}"),
            policies,
        })
    }

    /// Forgets `domain`'s counts of `day` (its report went out), on disk too.
    pub fn remove(&self, day: &str, domain: &str) -> Result<(), TlsRptError> {
        let _files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut st = self.state();
            if let Some(d) = st.days.get_mut(day) {
                d.remove(domain);
                if d.is_empty() {
                    st.days.remove(day);
                }
            }
            st.dirty.remove(&(day.to_string(), domain.to_string()));
        }
        if !file_safe(domain) || day_start(day).is_none() {
            return Ok(());
        }
        let path = self.dir.join(day).join(format!("{domain}.json"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(TlsRptError::Io { path, source: e }),
        }
        let _ = std::fs::remove_dir(self.dir.join(day)); // once empty
        Ok(())
    }
}

/// The report as RFC 8460 JSON.
pub fn json(report: &TlsReport) -> String {
    report.to_json()
}

/// The JSON gzip'd (`application/tlsrpt+gzip`).
pub fn gzip(report: &TlsReport) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(report.to_json().as_bytes()).expect("writing to memory");
    e.finish().expect("writing to memory")
}

/// The report message (RFC 8460 §5.3) from `from` to `to`, CRLF line ends.
pub fn message(
    report: &TlsReport,
    domain: &str,
    submitter: &str,
    from: &str,
    to: &[&str],
) -> Result<Vec<u8>, TlsRptError> {
    let mut out = Vec::new();
    report.write_rfc5322(domain, submitter, from, to.iter().copied(), &mut out).map_err(TlsRptError::Message)?;
    Ok(out)
}

/// POSTs the gzip'd report to `url` (an `https:` rua), the host reached at `addrs` (the
/// caller's resolver found them), its certificate verified under `roots`. Any 2xx is taken.
pub async fn post(
    url: &str,
    addrs: &[SocketAddr],
    body: Vec<u8>,
    roots: rustls::RootCertStore,
) -> Result<(), TlsRptError> {
    let http = |source| TlsRptError::Http { url: url.to_string(), source };
    let host = reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
    if addrs.is_empty() {
        return Err(TlsRptError::NoAddress { url: url.to_string() });
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(POST_TIMEOUT)
        .no_proxy()
        .resolve_to_addrs(&host, addrs)
        .user_agent(concat!("mailgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(http)?;
    let resp =
        client.post(url).header("Content-Type", "application/tlsrpt+gzip").body(body).send().await.map_err(http)?;
    if !resp.status().is_success() {
        return Err(TlsRptError::Status { url: url.to_string(), status: resp.status().as_u16() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(domain: &str) -> PolicyRef {
        PolicyRef {
            domain: domain.into(),
            kind: Kind::Sts,
            strings: vec!["version: STSv1".into(), "mode: enforce".into(), "mx: mx.example.test".into()],
            mx: vec!["mx.example.test".into()],
        }
    }

    fn failure(result: ResultType) -> Failure {
        Failure {
            result,
            receiving_mx: Some("mx.example.test".into()),
            receiving_ip: Some("192.0.2.1".parse().unwrap()),
            sending_ip: None,
            detail: Some("no".into()),
        }
    }

    #[test]
    fn counts_survive_a_restart_and_render_as_rfc8460_json() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reports::open(dir.path()).unwrap();
        let p = sts("example.test");
        for _ in 0..3 {
            r.record_on("2026-11-28", &p, None);
        }
        r.record_on("2026-11-28", &p, Some(failure(ResultType::CertificateExpired)));
        r.record_on("2026-11-28", &p, Some(failure(ResultType::CertificateExpired)));
        r.record_on("2026-11-28", &p, Some(failure(ResultType::StartTlsNotSupported)));
        r.flush().unwrap();
        drop(r);

        let r = Reports::open(dir.path()).unwrap();
        assert_eq!(r.days(), vec!["2026-11-28".to_string()]);
        assert_eq!(r.domains("2026-11-28"), vec!["example.test".to_string()]);
        let rep = r.report("2026-11-28", "example.test", "Org", "postmaster@gw.test", "gw.test").unwrap();
        let v: serde_json::Value = serde_json::from_str(&json(&rep)).unwrap();
        assert_eq!(v["organization-name"], "Org");
        assert_eq!(v["date-range"]["start-datetime"], "2026-11-28T00:00:00Z");
        assert_eq!(v["date-range"]["end-datetime"], "2026-11-28T23:59:59Z");
        let pol = &v["policies"][0];
        assert_eq!(pol["policy"]["policy-type"], "sts");
        assert_eq!(pol["policy"]["policy-domain"], "example.test");
        assert_eq!(pol["summary"]["total-successful-session-count"], 3);
        assert_eq!(pol["summary"]["total-failure-session-count"], 3);
        let details = pol["failure-details"].as_array().unwrap();
        assert_eq!(details.len(), 2);
        assert_eq!(details[0]["result-type"], "certificate-expired");
        assert_eq!(details[0]["failed-session-count"], 2);
        assert_eq!(details[0]["receiving-ip"], "192.0.2.1");

        // gzip round trip
        let gz = gzip(&rep);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text).unwrap();
        assert_eq!(text, json(&rep));

        r.remove("2026-11-28", "example.test").unwrap();
        assert!(r.days().is_empty());
        assert!(!dir.path().join("2026-11-28").exists());
    }

    #[test]
    fn hostile_names_never_become_paths_and_counts_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reports::open(dir.path()).unwrap();
        for d in ["../../etc", "..", ".", "a/b", "", "x\0y"] {
            r.record_on("2026-11-28", &sts(d), None);
        }
        r.flush().unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(files.is_empty(), "{files:?}");
        assert!(r.remove("../2026-11-28", "x").is_ok());

        let p = sts("example.test");
        for i in 0..(MAX_DETAILS + 50) {
            let mut f = failure(ResultType::ValidationFailure);
            f.detail = Some(format!("#{i}"));
            r.record_on("2026-11-29", &p, Some(f));
        }
        let rep = r.report("2026-11-29", "example.test", "o", "c", "s").unwrap();
        assert_eq!(rep.policies[0].failure_details.len(), MAX_DETAILS);
        assert_eq!(rep.policies[0].summary.total_failure as usize, MAX_DETAILS + 50);
        assert!(r.report("not-a-day", "example.test", "o", "c", "s").is_none());
    }

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_795_910_399), "2026-11-28");
        assert_eq!(day_of(1_795_910_400), "2026-11-29");
        assert_eq!(day_start("2026-11-29"), Some(1_795_910_400));
        assert_eq!(day_start("2026-02-30"), None);
        assert_eq!(day_start("../x"), None);
    }
}
