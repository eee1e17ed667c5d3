//! auth-static: checks SMTP AUTH credentials (on-auth) against a static list of users with
//! argon2 hashes (`$argon2id$…`, from `mailgate hash-password`). A PLAIN request to act for
//! another identity (authzid) passes only when `act_for` lists `user:identity`.

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use mailgate_plugin_sdk::prelude::*;

#[derive(Default)]
struct AuthStatic {
    /// (user, PHC or bcrypt hash) from `users = ["user:hash", …]`.
    users: Vec<(String, String)>,
    /// (user, identity it may act as) from `act_for = ["user:identity", …]`: PLAIN requests
    /// with another authorization identity are refused unless listed here.
    act_for: Vec<(String, String)>,
}

/// A well-formed hash to check against when the user is unknown, so that unknown users and
/// wrong passwords take the same time.
const DUMMY: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$0gV6m9UGyVvbxm2s6wJUb9i3/IfZp2ejg5DXnJJpY3g";

fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

impl Filter for AuthStatic {
    fn init(&mut self) -> Result<(), String> {
        for entry in config::get_list("users") {
            let (user, hash) = entry
                .split_once(':')
                .ok_or_else(|| format!("users: {entry:?} is not user:hash"))?;
            if PasswordHash::new(hash).is_err() {
                return Err(format!("users: the hash of {user:?} is not an argon2 PHC string"));
            }
            self.users.push((user.to_string(), hash.to_string()));
        }
        for entry in config::get_list("act_for") {
            let (user, identity) = entry
                .split_once(':')
                .ok_or_else(|| format!("act_for: {entry:?} is not user:identity"))?;
            self.act_for.push((user.to_string(), identity.to_string()));
        }
        if self.users.is_empty() {
            log::warn!("auth-static: no users configured, every AUTH fails");
        }
        Ok(())
    }

    fn on_auth(&mut self, _conn: &ConnectionInfo, req: &AuthRequest) -> Verdict {
        let hash = self.users.iter().find(|(u, _)| *u == req.username).map(|(_, h)| h.as_str());
        let ok = verify(hash.unwrap_or(DUMMY), &req.password) && hash.is_some();
        // Acting for someone else (RFC 4616 authzid) only where the config allows it.
        let may_act = req
            .authzid
            .as_ref()
            .is_none_or(|z| self.act_for.iter().any(|(u, i)| *u == req.username && i == z));
        if ok && !may_act {
            log::info!("auth-static: {:?} may not act for {:?}", req.username, req.authzid);
            Verdict::reject(535, "5.7.8", "Authentication credentials invalid")
        } else if ok {
            Verdict::Accept
        } else {
            log::info!("auth-static: credentials refused for {:?}", req.username);
            Verdict::reject(535, "5.7.8", "Authentication credentials invalid")
        }
    }

    /// No hook keeps anything in `self`: an instance may be lent to any session per call.
    const KEEPS_NO_STATE: bool = true;
}

export!(AuthStatic);
