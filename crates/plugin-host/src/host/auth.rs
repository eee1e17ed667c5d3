//! `auth`: the session's SPF, DKIM, DMARC, ARC and iprev results, computed once when first
//! asked. None in the queue, where there is no client.

use super::HostState;
use crate::bindings::mailgate::plugin::{auth, types};

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
    types::SpfResult { status: status(s.status), domain: s.domain.clone(), helo: s.helo }
}

impl auth::Host for HostState {
    async fn spf(&mut self) -> Option<types::SpfResult> {
        let a = self.auth.clone()?;
        self.waited(async { a.lock().await.spf().await.map(spf_result) }).await
    }
    async fn spf_helo(&mut self) -> Option<types::SpfResult> {
        let a = self.auth.clone()?;
        self.waited(async { a.lock().await.spf_helo().await.map(spf_result) }).await
    }
    async fn dkim(&mut self) -> Vec<types::DkimResult> {
        let Some(a) = self.auth.clone() else { return vec![] };
        self.waited(async {
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
        let a = self.auth.clone()?;
        self.waited(async {
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
        let a = self.auth.clone()?;
        self.waited(async {
            let mut a = a.lock().await;
            let r = &a.message().await?.arc;
            Some(types::ArcResult { status: status(r.status), instances: r.instances, sealer: r.sealer.clone() })
        })
        .await
    }
    async fn iprev(&mut self) -> Option<types::IprevResult> {
        let a = self.auth.clone()?;
        self.waited(async {
            let mut a = a.lock().await;
            let r = a.iprev().await;
            Some(types::IprevResult { status: status(r.status), hostname: r.hostname.clone() })
        })
        .await
    }
}
