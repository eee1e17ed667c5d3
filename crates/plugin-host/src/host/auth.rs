//! `auth`: the session's SPF, DKIM, DMARC, ARC and iprev results, computed once when first
//! asked. None in the queue, where there is no client.

use super::{Context, SharedAuth, Waited};
use crate::bindings::mailgate::plugin::{auth, types};

pub struct AuthState {
    /// The session's checks; none in the queue, where every import answers "none".
    session: Option<SharedAuth>,
    /// Time spent waiting for DNS answers, given back to the CPU budget.
    pub(super) waited: Waited,
}

impl AuthState {
    pub(super) fn new(cx: &Context<'_>) -> AuthState {
        AuthState { session: cx.auth.cloned(), waited: Waited::default() }
    }

    /// Lets go of the session's checks (they hold its message): the instance is going idle.
    pub fn forget(&mut self) {
        self.session = None;
    }
}

fn status(s: mailgate_auth::Status) -> types::AuthStatus {
    use mailgate_auth::Status as S;
    match s {
        S::Pass => types::AuthStatus::Pass,
        S::Fail => types::AuthStatus::Fail,
        S::SoftFail => types::AuthStatus::Softfail,
        S::Neutral => types::AuthStatus::Neutral,
        S::None => types::AuthStatus::None,
        S::TempError => types::AuthStatus::Temperror,
        S::PermError => types::AuthStatus::Permerror,
    }
}

fn spf_result(s: &mailgate_auth::Spf) -> types::SpfResult {
    let explanation = s.explanation.as_ref().map(|e| e.chars().filter(|c| !c.is_control()).take(400).collect());
    types::SpfResult { status: status(s.status), domain: s.domain.clone(), helo: s.helo, explanation }
}

impl auth::Host for AuthState {
    async fn spf(&mut self) -> Option<types::SpfResult> {
        let a = self.session.clone()?;
        self.waited.time(async { a.lock().await.spf().await.map(spf_result) }).await
    }
    async fn spf_helo(&mut self) -> Option<types::SpfResult> {
        let a = self.session.clone()?;
        self.waited.time(async { a.lock().await.spf_helo().await.map(spf_result) }).await
    }
    async fn dkim(&mut self) -> Vec<types::DkimResult> {
        let Some(a) = self.session.clone() else { return vec![] };
        self.waited
            .time(async {
                let mut a = a.lock().await;
                let Some(m) = a.message().await else { return vec![] };
                m.dkim
                    .iter()
                    .map(|d| types::DkimResult {
                        status: status(d.status),
                        domain: d.domain.clone(),
                        selector: d.selector.clone(),
                    })
                    .collect()
            })
            .await
    }
    async fn dmarc(&mut self) -> Option<types::DmarcResult> {
        let a = self.session.clone()?;
        self.waited
            .time(async {
                let mut a = a.lock().await;
                let d = a.message().await?.dmarc.as_ref()?;
                Some(types::DmarcResult {
                    status: status(d.status),
                    domain: d.domain.clone(),
                    policy: match d.policy {
                        mailgate_auth::Policy::None => types::DmarcPolicy::None,
                        mailgate_auth::Policy::Quarantine => types::DmarcPolicy::Quarantine,
                        mailgate_auth::Policy::Reject => types::DmarcPolicy::Reject,
                    },
                })
            })
            .await
    }
    async fn arc(&mut self) -> Option<types::ArcResult> {
        let a = self.session.clone()?;
        self.waited
            .time(async {
                let mut a = a.lock().await;
                let r = &a.message().await?.arc;
                Some(types::ArcResult { status: status(r.status), instances: r.instances, sealer: r.sealer.clone() })
            })
            .await
    }
    async fn iprev(&mut self) -> Option<types::IprevResult> {
        let a = self.session.clone()?;
        self.waited
            .time(async {
                let mut a = a.lock().await;
                let r = a.iprev().await;
                Some(types::IprevResult { status: status(r.status), hostname: r.hostname.clone() })
            })
            .await
    }
}
