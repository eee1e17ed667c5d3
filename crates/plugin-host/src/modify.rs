//! Plugin modifications in the gateway's own types: content edits as `mailgate-message` edits
//! (which the cleanup stage applies, checking every name and value, so a plugin cannot inject
//! a line end or a malformed field), envelope and route changes as values. Addresses that are
//! not addresses are refused here, with the reason, for the log.

use crate::bindings::types::{Modification, Route};
use mailgate_message::Edit;

/// A chain's modifications, sorted by what they change.
#[derive(Debug, Default)]
pub struct Edits {
    /// Header and body edits, in order.
    pub content: Vec<Edit>,
    /// New reverse path (`Some("")` is the null sender).
    pub sender: Option<String>,
    pub add_rcpts: Vec<String>,
    pub remove_rcpts: Vec<String>,
    /// A route for the whole message (already checked against the plugin's route grant).
    pub route: Option<Route>,
    /// Modifications refused, with the reason (for the log).
    pub refused: Vec<String>,
}

fn valid_address(a: &str) -> bool {
    a.is_empty() || mailgate_smtp::Address::parse_mailbox(a).is_ok()
}

/// Sorts `mods` (in chain order) into [`Edits`].
pub fn translate(mods: &[Modification]) -> Edits {
    let mut e = Edits::default();
    let content = &mut e.content;
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
            Modification::SetRoute(r) => e.route = Some(r.clone()),
            other => e.refused.push(format!("invalid address in {other:?}")),
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_by_what_they_change() {
        let e = translate(&[
            Modification::AddHeader(("X-A".into(), "1".into())),
            Modification::ReplaceBody(b"new\nbody".to_vec()),
            Modification::ChangeSender("".into()),
            Modification::AddRecipient("bcc@archive.test".into()),
            Modification::AddRecipient("not an address".into()),
            Modification::ChangeSender("also not one".into()),
            Modification::SetRoute(Route::Smarthost(("10.0.0.1".into(), 2525))),
        ]);
        assert_eq!(
            e.content,
            vec![Edit::AddHeader { name: "X-A".into(), value: "1".into() }, Edit::ReplaceBody(b"new\nbody".to_vec())]
        );
        assert_eq!(e.sender.as_deref(), Some(""));
        assert_eq!(e.add_rcpts, vec!["bcc@archive.test"]);
        assert!(matches!(e.route, Some(Route::Smarthost((ref h, 2525))) if h == "10.0.0.1"));
        assert_eq!(e.refused.len(), 2);
    }
}
