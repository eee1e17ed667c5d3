// figment::Jail closures must return figment::Error, whatever its size.
#![allow(clippy::result_large_err)]

use super::*;

/// The default config names plugin files relative to the working directory: make them.
fn fake_stock_plugins(jail: &mut figment::Jail) -> figment::error::Result<()> {
    std::fs::create_dir_all(jail.directory().join("plugins/dist")).unwrap();
    for p in ["helo-check", "rcpt-allow", "add-header"] {
        jail.create_file(format!("plugins/dist/{p}.wasm"), "")?;
    }
    Ok(())
}

#[test]
fn embedded_default_is_valid() {
    // Its plugin paths are relative to the working directory: give them files in a jail.
    figment::Jail::expect_with(|jail| {
        fake_stock_plugins(jail)?;
        check_default(Config::from_toml(DEFAULT_TOML).unwrap());
        Ok(())
    });
}

#[test]
fn missing_plugin_files_are_named() {
    // In a jail too: jails change the process's working directory.
    figment::Jail::expect_with(|_| {
        let e = Config::from_toml(DEFAULT_TOML).unwrap_err().to_string();
        assert!(e.contains("plugin[0] (helo-check).path plugins/dist/helo-check.wasm: no such file"), "{e}");
        Ok(())
    });
}

fn check_default(c: Config) {
    assert_eq!(c.listeners[0].address, "127.0.0.1:2525".parse().unwrap());
    assert!(c.accepts_domain("Example.Test"));
    assert!(matches!(c.route_for("example.test"), Some(Route::Maildir { .. })));
    assert!(matches!(c.route_for("elsewhere.example"), Some(Route::Mx { .. })));
    assert!(c.is_trusted("127.0.0.9".parse().unwrap()));
    assert!(c.is_trusted("::ffff:127.0.0.1".parse().unwrap()));
    assert!(!c.is_trusted("192.0.2.1".parse().unwrap()));
}

#[test]
fn unknown_keys_and_bad_values_name_the_key() {
    let e = Config::from_toml("[limits]\nmax_recipents = 5\n").unwrap_err().to_string();
    assert!(e.contains("max_recipents"), "{e}");
    let e = Config::from_toml("[limits]\nmax_recipients = \"many\"\n").unwrap_err().to_string();
    assert!(e.contains("max_recipients"), "{e}");
    let e = Config::from_toml(
        "[[listener]]\nname='a'\naddress='127.0.0.1:1'\n[routes]\n'x.test' = { type = 'smarthost', host = '' }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("routes.x.test"), "{e}");
    let e = Config::from_toml("").unwrap_err().to_string();
    assert!(e.contains("listener"), "{e}");
}

#[test]
fn env_overrides_with_double_underscore() {
    figment::Jail::expect_with(|jail| {
        fake_stock_plugins(jail)?;
        jail.set_env("MAILGATE_LIMITS__MAX_RECIPIENTS", "7");
        jail.set_env("MAILGATE_SERVER__HOSTNAME", "mx.env.test");
        let c = Config::load(None).unwrap();
        assert_eq!(c.limits.max_recipients, 7);
        assert_eq!(c.server.hostname, "mx.env.test");
        jail.set_env("MAILGATE_LIMITS__MAX_RECIPIENTZ", "7");
        assert!(Config::load(None).unwrap_err().to_string().contains("max_recipientz"));
        Ok(())
    });
}

#[test]
fn route_lookup_walks_parents() {
    let c = Config::from_toml(
        "[[listener]]\nname='a'\naddress='127.0.0.1:1'\n[routes]\n'example.net' = { type = 'discard' }\n",
    )
    .unwrap();
    assert_eq!(c.route_for("sub.Example.NET."), Some(&Route::Discard));
    assert_eq!(c.route_for("other.org"), None);
    assert_eq!(c.queue.retry_schedule[0].into_inner(), Duration::from_secs(300));
}

#[test]
fn submission_roles_need_a_certificate() {
    let e = Config::from_toml("[[listener]]\nname='sub'\naddress='127.0.0.1:1'\nrole='submission'\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("listener sub: role submission needs [tls] cert and key"), "{e}");
    let e = Config::from_toml("[[listener]]\nname='a'\naddress='127.0.0.1:1'\nrole='smtp'\n").unwrap_err().to_string();
    assert!(e.contains("role"), "{e}");
    let e = Config::from_toml("[[listener]]\nname='a'\naddress='127.0.0.1:1'\n[tls]\ncert='/nonexistent.pem'\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("tls.cert: /nonexistent.pem: no such file") && e.contains("cert and key go together"), "{e}");
}

#[test]
fn pipelines_are_checked() {
    let base = "[[listener]]\nname='a'\naddress='127.0.0.1:1'\n";
    let e =
        Config::from_toml(&format!("{base}[pipelines]\nstrict = ['nope']\n[domain_pipelines]\n'x.test' = 'missing'\n"))
            .unwrap_err()
            .to_string();
    assert!(e.contains("pipelines.strict: unknown plugin \"nope\""), "{e}");
    assert!(e.contains("domain_pipelines.x.test: unknown pipeline \"missing\""), "{e}");
    let e =
        Config::from_toml("[[listener]]\nname='a'\naddress='127.0.0.1:1'\npipeline='zzz'\n").unwrap_err().to_string();
    assert!(e.contains("listener a: unknown pipeline \"zzz\""), "{e}");
    let c = Config::from_toml(&format!("{base}[pipelines]\nempty = []\n[domain_pipelines]\n'example.org' = 'empty'\n"))
        .unwrap();
    assert_eq!(c.pipeline_for_domain("Sub.Example.ORG"), Some("empty"));
    assert_eq!(c.pipeline_for_domain("example.net"), None);
    assert!(c.pipeline("empty").is_empty());
}

/// An internationalised domain picks the same route, pipeline and acceptance in either form,
/// whichever form the config uses.
#[test]
fn domains_compare_in_one_form() {
    let c = Config::from_toml(
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\n\n[relay]\naccept_domains = [\"Müller.example\"]\n\n\
         [routes]\n\"xn--mller-kva.example\" = { type = \"discard\" }\n\"*\" = { type = \"mx\" }\n\n\
         [domain_pipelines]\n\"MÜLLER.example\" = \"default\"\n",
    )
    .unwrap();
    for d in ["müller.example", "MÜLLER.EXAMPLE.", "xn--mller-kva.example", "XN--MLLER-KVA.example"] {
        assert!(c.accepts_domain(d), "{d}");
        assert!(matches!(c.route_for(d), Some(Route::Discard)), "{d}");
        assert_eq!(c.route_for(&format!("sub.{d}")).map(|r| matches!(r, Route::Discard)), Some(true), "{d}");
        assert_eq!(c.pipeline_for_domain(d), Some("default"), "{d}");
    }
    assert!(!c.accepts_domain("muller.example"));
    assert!(matches!(c.route_for("muller.example"), Some(Route::Mx { .. })));
    assert_eq!(canonical_domain("Example.ORG."), "example.org");
}

#[test]
fn smarthost_credentials_are_checked_and_never_printed() {
    let base = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\n[routes]\n";
    let ok = Config::from_toml(&format!(
        "{base}\"a.test\" = {{ type = \"smarthost\", host = \"r.test\", tls = \"required\", auth = {{ username = \"u\", password = \"hunter2\" }} }}\n\"b.test\" = {{ type = \"lmtp\", socket = \"/run/dovecot/lmtp\" }}\n"
    ))
    .unwrap();
    let Some(Route::Smarthost { auth: Some(a), .. }) = ok.route_for("a.test") else { panic!("no auth route") };
    assert_eq!(a.password().unwrap(), "hunter2");
    assert!(!format!("{ok:?}").contains("hunter2"));
    assert!(matches!(ok.route_for("b.test"), Some(Route::Lmtp { port: 24, .. })));
    for bad in [
        // credentials need verified TLS
        "\"a.test\" = { type = \"smarthost\", host = \"r.test\", tls = \"opportunistic\", auth = { username = \"u\", password = \"p\" } }",
        // exactly one password source
        "\"a.test\" = { type = \"smarthost\", host = \"r.test\", tls = \"required\", auth = { username = \"u\", password = \"p\", password_env = \"X\" } }",
        "\"a.test\" = { type = \"smarthost\", host = \"r.test\", tls = \"required\", auth = { username = \"u\", password_file = \"/nonexistent/pw\" } }",
        // an LMTP route goes somewhere, one way, and not TLS on a unix socket
        "\"a.test\" = { type = \"lmtp\" }",
        "\"a.test\" = { type = \"lmtp\", host = \"h\", socket = \"/s\" }",
        "\"a.test\" = { type = \"lmtp\", socket = \"/s\", tls = \"required\" }",
    ] {
        assert!(Config::from_toml(&format!("{base}{bad}\n")).is_err(), "{bad}");
    }
}

#[test]
fn every_stage_has_its_own_bit() {
    let mut seen = 0u8;
    for s in Stage::ALL {
        assert_eq!(s.bit().count_ones(), 1, "{s:?}");
        assert_eq!(seen & s.bit(), 0, "{s:?} shares a bit");
        seen |= s.bit();
    }
    assert_eq!(seen.count_ones() as usize, Stage::ALL.len());
}
