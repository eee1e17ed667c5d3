//! RSET, NOOP, VRFY/EXPN, HELP and QUIT.

use mailgate_smtp::reply::codes;
use mailgate_smtp::{Enhanced, Reply};

use super::{Next, Session, SessionIo};

impl<S: SessionIo> Session<S> {
    pub(crate) fn rset(&mut self) -> Next {
        self.tx = None;
        self.reply(codes::ok());
        Next::Continue
    }

    pub(crate) fn ok(&mut self) -> Next {
        self.reply(codes::ok());
        Next::Continue
    }

    /// RFC 5321 §3.5.3: we do not disclose mailboxes, but will try to deliver.
    pub(crate) fn vrfy(&mut self) -> Next {
        self.reply(Reply::new(
            252,
            Enhanced(2, 5, 2),
            "Cannot VRFY user, but will accept message and attempt delivery",
        ));
        Next::Continue
    }

    /// RFC 5321 §3.5.2: we expand no mailing lists.
    pub(crate) fn expn(&mut self) -> Next {
        self.reply(Reply::new(502, Enhanced(5, 5, 1), "EXPN not available: no mailing lists are disclosed"));
        Next::Continue
    }

    pub(crate) fn help(&mut self) -> Next {
        self.reply(Reply::new(
            214,
            Enhanced(2, 0, 0),
            "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\nSee RFC 5321",
        ));
        Next::Continue
    }

    pub(crate) fn quit(&mut self) -> Next {
        let me = self.config.server.hostname.clone();
        self.reply(Reply::new(221, Enhanced(2, 0, 0), format!("{me} closing connection")));
        Next::Close
    }
}
