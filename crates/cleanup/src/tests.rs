//! The cleanup stage on its own: messages in, the message as it would be stored (or the
//! refusal) out. The DKIM signatures made here are verified with dkimpy in the end-to-end
//! suite; these tests check the steps and their order.

use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::ResolverConfig;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use mailgate_config::Config;
use mailgate_message::Edit;
use mailgate_smtp::{Enhanced, Reply};
use mailgate_spool::{BoxFuture, Envelope, LocalSpool, RouteChoice, Spool};

use crate::*;

fn config(extra: &str) -> Arc<Config> {
    let toml = format!(
        "[server]\nhostname = \"mx.test\"\n\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\n\n{extra}\n"
    );
    Arc::new(Config::from_toml(&toml).unwrap())
}

/// A resolver that knows no server: nothing here may need DNS.
fn authenticator() -> Arc<mailgate_auth::Authenticator> {
    let resolver =
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(vec![]), TokioRuntimeProvider::default())
            .build()
            .unwrap();
    Arc::new(mailgate_auth::Authenticator::new(resolver, "mx.test", Duration::from_secs(1)))
}

fn cleanup(extra: &str) -> Cleanup {
    let config = config(extra);
    let signing = Signing::load(&config, authenticator()).unwrap();
    let maps = Maps::load(&config).unwrap();
    Cleanup::new(config, signing, maps)
}

fn client() -> Origin {
    Origin {
        client: Some(("client.test".into(), "192.0.2.7".parse().unwrap())),
        with: Some("ESMTPS".into()),
        tls: Some(("TLSv1.3".into(), "TLS_AES_128_GCM_SHA256".into())),
        listener: "mx".into(),
        ..Origin::default()
    }
}

fn incoming(data: &str, rcpts: &[&str]) -> Incoming {
    let env = envelope("Q1".into(), "a@sender.test".into(), rcpts.iter().map(|r| r.to_string()).collect());
    Incoming { envelope: env, data: data.as_bytes().to_vec(), hold: None, traced: false }
}

const MSG: &str = "From: <a@sender.test>\r\nSubject: hi\r\n\r\nbody\r\n";

/// A policy that answers what it was given, and remembers what it saw.
struct Fixed {
    answer: PolicyAnswer,
    saw: Option<(Envelope, Vec<u8>)>,
}

impl DataPolicy for Fixed {
    fn on_data<'a>(&'a mut self, env: &'a Envelope, data: Arc<Vec<u8>>) -> BoxFuture<'a, PolicyAnswer> {
        Box::pin(async move {
            self.saw = Some((env.clone(), data.to_vec()));
            self.answer.clone()
        })
    }
}

fn fixed(verdict: Verdict, changes: Changes) -> Fixed {
    Fixed { answer: PolicyAnswer { verdict, changes }, saw: None }
}

async fn kept(c: &Cleanup, msg: Incoming, policy: Option<&mut dyn DataPolicy>) -> Prepared {
    match c.process(msg, &client(), policy).await {
        Ok(Outcome::Kept(p)) => p,
        Ok(Outcome::Dropped { why, .. }) => panic!("dropped: {why:?}"),
        Err(e) => panic!("refused: {e}"),
    }
}

fn text(p: &Prepared) -> String {
    String::from_utf8(p.data.clone()).unwrap()
}

#[tokio::test]
async fn received_goes_first_and_names_the_client_tls_and_recipient() {
    let p = kept(&cleanup(""), incoming(MSG, &["u@example.test"]), None).await;
    let t = text(&p);
    assert!(
        t.starts_with("Received: from client.test ([192.0.2.7])\r\n\tby mx.test with ESMTPS (TLSv1.3 TLS_AES_128_GCM_SHA256) id Q1\r\n\tfor <u@example.test>;\r\n\t"),
        "{t}"
    );
    assert!(t.ends_with(MSG), "{t}");
    // Two recipients: neither is named (RFC 5321 §7.6).
    let p = kept(&cleanup(""), incoming(MSG, &["u@example.test", "v@example.test"]), None).await;
    assert!(!text(&p).contains("for <"), "{}", text(&p));
}

#[tokio::test]
async fn a_message_traced_by_its_session_is_not_traced_twice() {
    let c = cleanup("");
    let mut msg = incoming(MSG, &["u@example.test"]);
    let field = c.received(&client(), &msg.envelope);
    msg.data = [field.as_bytes(), MSG.as_bytes()].concat();
    msg.traced = true;
    let p = kept(&c, msg, None).await;
    assert_eq!(text(&p).matches("Received: ").count(), 1);
}

#[tokio::test]
async fn local_messages_have_no_client_in_received() {
    let c = cleanup("");
    let p = match c.process(incoming(MSG, &["u@example.test"]), &Origin::local(), None).await {
        Ok(Outcome::Kept(p)) => p,
        _ => panic!("not kept"),
    };
    assert!(text(&p).starts_with("Received: by mx.test (mailgate) id Q1"), "{}", text(&p));
}

#[tokio::test]
async fn loops_are_refused_past_max_hops() {
    let c = cleanup("");
    let hop = "Received: from a by b; Thu, 01 Jan 1970 00:00:00 +0000\r\n";
    // Ours makes MAX_HOPS: still fine.
    let ok = format!("{}{MSG}", hop.repeat(MAX_HOPS - 1));
    assert!(matches!(c.process(incoming(&ok, &["u@x.test"]), &client(), None).await, Ok(Outcome::Kept(_))));
    let looping = format!("{}{MSG}", hop.repeat(MAX_HOPS));
    let e = c.process(incoming(&looping, &["u@x.test"]), &client(), None).await.err().unwrap();
    assert!(matches!(e, Refusal::Loop(51)), "{e}");
    assert_eq!(e.reply(), Reply::new(554, Enhanced(5, 4, 6), "Too many hops (mail loop?)"));
}

#[tokio::test]
async fn structure_is_checked_before_the_policy_sees_the_message() {
    let c = cleanup("[limits]\nmax_mime_depth = 3\n");
    let mut deep = String::from("From: <a@sender.test>\r\n");
    for i in 0..6 {
        deep += &format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n");
    }
    let mut policy = fixed(Verdict::Continue, Changes::default());
    let e = c.process(incoming(&deep, &["u@x.test"]), &client(), Some(&mut policy)).await.err().unwrap();
    assert!(matches!(e, Refusal::Structure(_)), "{e}");
    assert_eq!(e.reply().code, 554);
    assert!(policy.saw.is_none(), "the policy never saw it");
}

#[tokio::test]
async fn ambiguous_from_is_refused_unless_allowed() {
    let two = "From: <a@one.test>\r\nFrom: <b@two.test>\r\n\r\nx\r\n";
    let e = cleanup("").process(incoming(two, &["u@x.test"]), &client(), None).await.err().unwrap();
    assert!(matches!(e, Refusal::AmbiguousFrom(_)), "{e}");
    assert_eq!(e.reply().code, 550);
    let c = cleanup("[auth]\nrefuse_ambiguous_from = false\n");
    assert!(matches!(c.process(incoming(two, &["u@x.test"]), &client(), None).await, Ok(Outcome::Kept(_))));
}

#[tokio::test]
async fn results_forged_in_our_name_are_removed_others_kept() {
    let msg = format!(
        "Authentication-Results: mx.test; spf=pass smtp.mailfrom=forged.test\r\n\
         Authentication-Results: other.test; spf=pass smtp.mailfrom=theirs.test\r\n{MSG}"
    );
    let mut policy = fixed(Verdict::Continue, Changes::default());
    let p = kept(&cleanup(""), incoming(&msg, &["u@x.test"]), Some(&mut policy)).await;
    assert!(!text(&p).contains("forged.test") && text(&p).contains("theirs.test"), "{}", text(&p));
    // The policy already saw the cleaned message.
    let (_, saw) = policy.saw.unwrap();
    assert!(!String::from_utf8(saw).unwrap().contains("forged.test"));
}

#[tokio::test]
async fn policy_refusals_carry_their_reply() {
    let c = cleanup("");
    let r = Reply::new(550, Enhanced(5, 7, 1), "spam");
    let mut p = fixed(Verdict::Reply(r.clone()), Changes::default());
    let e = c.process(incoming(MSG, &["u@x.test"]), &client(), Some(&mut p)).await.err().unwrap();
    assert_eq!(e.reply(), r);
    assert!(!e.closes_session());
    let mut p = fixed(Verdict::Disconnect(Reply::new(421, Enhanced(4, 7, 0), "bye")), Changes::default());
    let e = c.process(incoming(MSG, &["u@x.test"]), &client(), Some(&mut p)).await.err().unwrap();
    assert_eq!(e.reply().code, 421);
    assert!(e.closes_session());
}

#[tokio::test]
async fn discard_and_no_recipients_are_dropped() {
    let c = cleanup("");
    let mut p = fixed(Verdict::Discard, Changes::default());
    let out = c.process(incoming(MSG, &["u@x.test"]), &client(), Some(&mut p)).await.unwrap();
    assert!(matches!(out, Outcome::Dropped { why: Dropped::Discarded, .. }));
    let remove = Changes { remove_rcpts: vec!["U@x.test".into()], ..Changes::default() };
    let mut p = fixed(Verdict::Continue, remove);
    let out = c.process(incoming(MSG, &["u@x.test"]), &client(), Some(&mut p)).await.unwrap();
    assert!(matches!(out, Outcome::Dropped { why: Dropped::NoRecipients, .. }));
}

#[tokio::test]
async fn changes_are_applied_to_content_envelope_and_route() {
    let changes = Changes {
        content: vec![
            Edit::AddHeader { name: "X-Checked".into(), value: "yes".into() },
            Edit::AddHeader { name: "X-Bad".into(), value: "a\r\nBcc: victim@x.test".into() },
            Edit::ChangeHeader { name: "Subject".into(), index: 0, value: "changed".into() },
        ],
        sender: Some(String::new()),
        add_rcpts: vec!["archive@x.test".into(), "U@x.test".into()],
        remove_rcpts: vec!["gone@x.test".into()],
        route: Some(RouteChoice::Hold),
        refused: vec![],
    };
    let mut p = fixed(Verdict::Quarantine("looks odd".into()), changes);
    let out = kept(&cleanup(""), incoming(MSG, &["u@x.test", "gone@x.test"]), Some(&mut p)).await;
    let t = text(&out);
    assert!(t.contains("\r\nX-Checked: yes\r\n") && t.contains("Subject: changed\r\n"), "{t}");
    assert!(!t.contains("victim"), "an injected line end never lands: {t}");
    let env = &out.envelope;
    assert_eq!(env.sender, "");
    let rcpts: Vec<&str> = env.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(rcpts, ["u@x.test", "archive@x.test"]);
    assert_eq!(env.route, Some(RouteChoice::Hold));
    assert_eq!(env.quarantine.as_deref(), Some("looks odd"));
}

#[tokio::test]
async fn eight_bit_content_marks_the_envelope() {
    let p = kept(&cleanup(""), incoming("Subject: caf\u{e9}\r\n\r\nx\r\n", &["u@x.test"]), None).await;
    assert!(p.envelope.body_8bit);
}

#[tokio::test]
async fn signs_with_the_identity_that_applies_after_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let (private, _public) = mailgate_auth::keygen(mailgate_auth::KeyKind::Ed25519).unwrap();
    let key = dir.path().join("k.pem");
    std::fs::write(&key, private).unwrap();
    let c = cleanup(&format!(
        "[[dkim_sign]]\ndomain = \"sender.test\"\nselector = \"s1\"\nkey = \"{}\"\nsign_for = \"any\"\n",
        key.display()
    ));
    let changes =
        Changes { content: vec![Edit::AddHeader { name: "X-Late".into(), value: "1".into() }], ..Changes::default() };
    let mut p = fixed(Verdict::Continue, changes);
    let out = kept(&c, incoming(MSG, &["u@x.test"]), Some(&mut p)).await;
    let t = text(&out);
    assert!(t.starts_with("DKIM-Signature: "), "{t}");
    assert!(t.contains("d=sender.test") && t.contains("s=s1"), "{t}");
    // The signature is on top of the message the policy changed.
    assert!(t.find("DKIM-Signature").unwrap() < t.find("X-Late").unwrap());
    // Mail from another domain is not signed.
    let other = "From: <a@elsewhere.test>\r\n\r\nx\r\n";
    assert!(!text(&kept(&c, incoming(other, &["u@x.test"]), None).await).contains("DKIM-Signature"));
}

/// Both ways a signature is made: on the async thread (Ed25519, small message) and on the
/// blocking pool (an RSA key; a message above `INLINE_CHECK` with either key). Each message
/// comes out signed and otherwise as it went in.
#[tokio::test]
async fn signs_inline_and_on_the_blocking_pool() {
    let dir = tempfile::tempdir().unwrap();
    let mut sections = String::new();
    let (ed25519, _public) = mailgate_auth::keygen(mailgate_auth::KeyKind::Ed25519).unwrap();
    std::fs::write(dir.path().join("ed.test.pem"), ed25519).unwrap();
    // openssl makes the RSA key in milliseconds; the unoptimised test build takes seconds.
    let rsa = dir.path().join("rsa.test.pem");
    let made = std::process::Command::new("openssl").args(["genrsa", "-out"]).arg(&rsa).arg("2048").output().unwrap();
    assert!(made.status.success(), "{made:?}");
    for domain in ["ed.test", "rsa.test"] {
        let key = dir.path().join(format!("{domain}.pem"));
        sections += &format!(
            "[[dkim_sign]]\ndomain = \"{domain}\"\nselector = \"s\"\nkey = \"{}\"\nsign_for = \"any\"\n",
            key.display()
        );
    }
    let c = cleanup(&sections);
    let big = "x".repeat(76) + "\r\n";
    let big = big.repeat(INLINE_CHECK / big.len() + 1);
    for domain in ["ed.test", "rsa.test"] {
        for body in ["small\r\n", big.as_str()] {
            let msg = format!("From: <a@{domain}>\r\nSubject: s\r\n\r\n{body}");
            let t = text(&kept(&c, incoming(&msg, &["u@x.test"]), None).await);
            assert!(
                t.starts_with("DKIM-Signature: ") && t.contains(&format!("d={domain};")),
                "{domain} {}",
                body.len()
            );
            assert!(t.ends_with(&msg), "{domain} {}", body.len());
        }
    }
}

#[tokio::test]
async fn submit_stores_exactly_the_prepared_message() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = LocalSpool::open(dir.path(), 1 << 20).unwrap();
    let c = cleanup("");
    let out = c.submit(&*spool, incoming(MSG, &["u@x.test"]), &client(), None).await.unwrap();
    let Outcome::Kept(a) = out else { panic!("not kept") };
    assert_eq!(spool.read(&a.envelope.id).await.unwrap(), *a.data);
    spool.close();
}

/// RFC 6409 §8.3: an authenticated client's message without Date or Message-ID gets them at
/// the end of its header section; one that has them, or an unauthenticated one, does not; the
/// config turns each off.
#[tokio::test]
async fn submissions_get_date_and_message_id_when_missing() {
    let mut user = client();
    user.user = Some("alice".into());
    let run = |c: Cleanup, origin: Origin, data: &'static str| async move {
        match c.process(incoming(data, &["u@example.test"]), &origin, None).await {
            Ok(Outcome::Kept(p)) => text(&p),
            _ => panic!("not kept"),
        }
    };
    let t = run(cleanup(""), user.clone(), MSG).await;
    let (head, body) = t.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("\r\nSubject: hi\r\nDate: ") && head.ends_with("\r\nMessage-ID: <Q1@mx.test>"), "{t}");
    assert_eq!(body, "body\r\n");
    // Present already (any case), or not authenticated: untouched.
    let has = "From: <a@sender.test>\r\nDATE: Sun, 29 Nov 2026 05:00:00 +0000\r\nmessage-id: <x@y>\r\n\r\nbody\r\n";
    assert!(run(cleanup(""), user.clone(), has).await.ends_with(has));
    assert!(run(cleanup(""), client(), MSG).await.ends_with(MSG));
    // Folded lines are not field names; a message without a body gets its fields too.
    let folded = "Subject: x\r\n Date: not a field\r\n\r\nb\r\n";
    assert!(run(cleanup(""), user.clone(), folded).await.contains(" Date: not a field\r\nDate: "));
    let headers_only = "Subject: x";
    let t = run(cleanup(""), user.clone(), headers_only).await;
    assert!(t.contains("Subject: x\r\nDate: ") && t.ends_with(">\r\n"), "{t:?}");
    let off = run(cleanup("[submission]\nadd_date = false\nadd_message_id = false\n"), user, MSG).await;
    assert!(off.ends_with(MSG), "{off}");
}

/// The one-pass field check: a name, blanks, a colon, at a line start of the header section
/// only; any case; a longer or prefixed name is another field.
#[test]
fn has_fields_looks_at_line_starts_of_the_header_only() {
    let names = ["date", "message-id"];
    assert_eq!(has_fields(b"From: a\r\nDate : x\r\n\r\nMessage-ID: <b>\r\n", names), [true, false]);
    assert_eq!(has_fields(b"MESSAGE-ID:<a>\r\nX-Date: x\r\nDate-Sent: y\r\n\r\n", names), [false, true]);
    assert_eq!(has_fields(b"Subject: s\r\n\tDate: folded\r\n\r\nDate: body\r\n", names), [false, false]);
    assert_eq!(has_fields(b"Date\t:x\r\nmessage-id:\r\n", names), [true, true]);
    assert_eq!(has_fields(b"Date", names), [false, false]);
    assert_eq!(has_fields(b"\r\nDate: body only\r\n", names), [false, false]);
}

#[test]
fn received_protocol_names_follow_rfc_3848_and_6531() {
    for (esmtp, utf8, tls, auth) in (0..16).map(|i| (i & 1 != 0, i & 2 != 0, i & 4 != 0, i & 8 != 0)) {
        let base = if utf8 {
            "UTF8SMTP"
        } else if esmtp {
            "ESMTP"
        } else {
            "SMTP"
        };
        let want = format!("{base}{}{}", if tls { "S" } else { "" }, if auth { "A" } else { "" });
        assert_eq!(crate::protocol(esmtp, utf8, tls, auth), want);
    }
}
