//! Applying plugin modifications: content edits go to `mailgate-message` (which checks every
//! name and value, so a plugin cannot inject a line end or a malformed field); envelope and
//! route changes are collected here. Invalid modifications are dropped and logged.

use crate::bindings::types::{Modification, Route};
use mailgate_message::Edit;

/// The result of applying a chain's modifications.
#[derive(Debug, Default)]
pub struct Edits {
    /// The new message, when header or body edits were made.
    pub data: Option<Vec<u8>>,
    /// New reverse path (`Some("")` is the null sender).
    pub sender: Option<String>,
    pub add_rcpts: Vec<String>,
    pub remove_rcpts: Vec<String>,
    /// A route for the whole message, in the queue's text form.
    pub route: Option<String>,
    /// Modifications refused, with the reason (for the log).
    pub refused: Vec<String>,
}

/// The route in the text form the spool stores and the queue reads:
/// `mx:DOMAIN`, `smarthost:HOST:PORT`, `maildir:PATH`, `discard`, `hold`, `reject:CODE ENH TEXT`.
pub fn route_text(r: &Route) -> String {
    match r {
        Route::Mx(d) => format!("mx:{d}"),
        Route::Smarthost((h, p)) => format!("smarthost:{h}:{p}"),
        Route::Maildir(p) => format!("maildir:{p}"),
        Route::Discard => "discard".into(),
        Route::Hold => "hold".into(),
        Route::Reject(r) => format!(
            "reject:{} {} {}",
            r.code,
            if r.enhanced.is_empty() { "5.0.0" } else { &r.enhanced },
            r.text.replace(['\r', '\n'], " ")
        ),
    }
}

fn valid_address(a: &str) -> bool {
    a.is_empty() || mailgate_smtp::Address::parse_mailbox(a).is_ok()
}

/// Applies `mods` in order to `data` (the message as it will be spooled): the content edits
/// through [`mailgate_message::apply`], the envelope and route here.
/// A replacement body may be at most `max_body` octets (the message size limit).
pub fn apply(data: &[u8], mods: &[Modification], max_body: usize) -> Edits {
    let mut e = Edits::default();
    if mods.is_empty() {
        return e;
    }
    let mut content = vec![];
    for m in mods {
        match m {
            Modification::AddHeader((n, v)) => content.push(Edit::AddHeader { name: n.clone(), value: v.clone() }),
            Modification::RemoveHeader(n) => content.push(Edit::RemoveHeader { name: n.clone() }),
            Modification::ChangeHeader((n, idx, v)) => {
                content.push(Edit::ChangeHeader { name: n.clone(), index: *idx, value: v.clone() })
            }
            Modification::ReplaceBody(b) => content.push(Edit::ReplaceBody(b.clone())),
            Modification::AddRecipient(a) if valid_address(a) && !a.is_empty() => e.add_rcpts.push(a.clone()),
            Modification::RemoveRecipient(a) => e.remove_rcpts.push(a.clone()),
            Modification::ChangeSender(a) if valid_address(a) => e.sender = Some(a.clone()),
            Modification::SetRoute(r) => e.route = Some(route_text(r)),
            other => e.refused.push(format!("{other:?}")),
        }
    }
    let applied = mailgate_message::apply(data, &content, max_body);
    e.data = applied.data;
    e.refused.extend(applied.refused.into_iter().map(|(_, why)| why.to_string()));
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Received: x\r\nSubject: one\r\n two\r\nX-A: 1\r\nX-A: 2\r\n\r\nbody\r\n";

    #[test]
    fn injection_is_refused() {
        let e = apply(
            MSG,
            &[
                Modification::AddHeader(("X-Evil".into(), "a\r\nBcc: victim@x".into())),
                Modification::AddHeader(("Bad Name".into(), "v".into())),
            ],
            1000,
        );
        assert!(e.data.is_none());
        assert_eq!(e.refused.len(), 2);
    }

    #[test]
    fn body_and_envelope() {
        let e = apply(
            MSG,
            &[
                Modification::ReplaceBody(b"new\nbody".to_vec()),
                Modification::ChangeSender("".into()),
                Modification::AddRecipient("bcc@archive.test".into()),
                Modification::AddRecipient("not an address".into()),
                Modification::SetRoute(Route::Smarthost(("10.0.0.1".into(), 2525))),
            ],
            1000,
        );
        assert!(String::from_utf8(e.data.unwrap()).unwrap().ends_with("X-A: 2\r\n\r\nnew\r\nbody\r\n"));
        assert_eq!(e.sender.as_deref(), Some(""));
        assert_eq!(e.add_rcpts, vec!["bcc@archive.test"]);
        assert_eq!(e.route.as_deref(), Some("smarthost:10.0.0.1:2525"));
        assert_eq!(e.refused.len(), 1);
    }
}
