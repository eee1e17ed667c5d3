//! The envelope a hook is asked about, fetched from the host when the plugin first reads it.

use std::cell::{OnceCell, RefCell};
use std::ops::Deref;
use std::rc::Rc;

use crate::bindings::mailgate::plugin::session;
use crate::bindings::mailgate::plugin::types::EnvelopeRef;

/// The envelope's contents, as the WIT record `envelope` has them: `mail_from`, `rcpt_to`,
/// `body_8bit`, `smtputf8`, `size_hint`.
pub type EnvelopeData = crate::bindings::mailgate::plugin::types::Envelope;

/// The SMTP envelope a hook is asked about. It reads as an [`EnvelopeData`] (`env.mail_from`,
/// `env.rcpt_to`, …): the host passes only a reference, and the contents are fetched when
/// the plugin first reads them — a hook that never looks at the envelope costs nothing for
/// it. Recipients fetched once are kept for the instance's later hooks of the same
/// transaction, so each is fetched once however many recipients follow.
pub struct Envelope {
    at: EnvelopeRef,
    data: OnceCell<Rc<EnvelopeData>>,
}

thread_local! {
    /// The envelope last fetched and its version (0: none; the host never gives out 0).
    static KEPT: RefCell<(u64, Option<Rc<EnvelopeData>>)> = const { RefCell::new((0, None)) };
}

impl Envelope {
    pub(crate) fn new(at: EnvelopeRef) -> Envelope {
        Envelope { at, data: OnceCell::new() }
    }

    /// The number of recipients, without fetching the envelope.
    pub fn recipient_count(&self) -> usize {
        self.at.recipients as usize
    }

    fn fetch(at: EnvelopeRef) -> Rc<EnvelopeData> {
        KEPT.with_borrow_mut(|kept| {
            let want = at.recipients as usize;
            match kept {
                (version, Some(env)) if *version == at.version && env.rcpt_to.len() <= want => {
                    if env.rcpt_to.len() < want {
                        let more = session::get_envelope(env.rcpt_to.len() as u32).rcpt_to;
                        Rc::make_mut(env).rcpt_to.extend(more);
                    }
                    env.clone()
                }
                _ => {
                    let env = Rc::new(session::get_envelope(0));
                    *kept = (at.version, Some(env.clone()));
                    env
                }
            }
        })
    }
}

impl Deref for Envelope {
    type Target = EnvelopeData;

    fn deref(&self) -> &EnvelopeData {
        self.data.get_or_init(|| Envelope::fetch(self.at))
    }
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        EnvelopeData::fmt(self, f)
    }
}
