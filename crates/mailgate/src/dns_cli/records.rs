//! The records of a [`Plan`] as zone-file lines, each group with a comment saying what it is
//! for (`mailgate dns records`).

use std::fmt::Write;
use std::net::IpAddr;

use super::{reverse_name, Plan};

/// A TXT value as quoted character-strings of at most 255 octets.
fn txt(value: &str) -> String {
    let strings: Vec<String> = mailgate_auth::txt_strings(value).iter().map(|s| format!("\"{s}\"")).collect();
    if strings.len() == 1 {
        strings[0].clone()
    } else {
        format!("( {} )", strings.join(" "))
    }
}

fn line(out: &mut String, name: &str, kind: &str, value: &str) {
    let _ = writeln!(out, "{:<40} IN {:<5} {value}", format!("{name}."), kind);
}

fn address_kind(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "A"
    } else {
        "AAAA"
    }
}

/// The zone-file text for `plan`.
pub fn render(plan: &Plan) -> String {
    let d = &plan.domain;
    let h = &plan.hostname;
    let mut out = format!("; DNS records for {d}, from mailgate's configuration\n");
    out.push_str("\n; Mail for the domain comes to this gateway.\n");
    line(&mut out, d, "MX", &format!("10 {h}."));
    for ip in &plan.addresses {
        line(&mut out, h, address_kind(*ip), &ip.to_string());
    }
    if plan.addresses.is_empty() {
        out.push_str(&format!("; ({h} needs A/AAAA records: give --ip with the gateway's addresses)\n"));
    }

    out.push_str("\n; SPF: the addresses mail from the domain leaves from ([[pool]] sources and --ip).\n");
    line(&mut out, d, "TXT", &txt(&plan.spf()));

    if plan.dkim.is_empty() {
        out.push_str(&format!("\n; DKIM: no [[dkim_sign]] for {d} (`mailgate dkim keygen` makes a key).\n"));
    } else {
        out.push_str("\n; DKIM: the public half of every signing key of the domain.\n");
        for k in &plan.dkim {
            line(&mut out, &format!("{}._domainkey.{d}", k.selector), "TXT", &txt(&k.record));
        }
    }

    out.push_str("\n; DMARC: start with p=none and read the reports; then p=quarantine, then p=reject.\n");
    line(&mut out, &format!("_dmarc.{d}"), "TXT", &txt(&plan.dmarc));

    match &plan.mta_sts {
        Some((policy, id)) => {
            out.push_str(&format!(
                "\n; MTA-STS (RFC 8461): senders require verified TLS to the MX. Serve this policy at\n; {} (HTTPS, a certificate valid for mta-sts.{d}), and change the id whenever it changes:\n",
                mailgate_mtasts::policy_url(d)
            ));
            for l in policy.render().lines() {
                out.push_str(&format!(";   {l}\n"));
            }
            line(&mut out, &format!("_mta-sts.{d}"), "TXT", &txt(&format!("v=STSv1; id={id}")));
        }
        None => out.push_str("\n; MTA-STS and DANE: the gateway has no [tls] certificate; they need one.\n"),
    }

    out.push_str("\n; TLS-RPT (RFC 8460): where senders report TLS failures on the way to the domain.\n");
    line(&mut out, &format!("_smtp._tls.{d}"), "TXT", &txt(&plan.tlsrpt));

    if !plan.senders.is_empty() {
        out.push_str(
            "\n; Reverse DNS of every sending address (set by whoever holds the address block): each\n; PTR names the EHLO name used from it, and that name resolves back to the address.\n",
        );
        for s in &plan.senders {
            line(&mut out, &reverse_name(s.ip), "PTR", &format!("{}.", s.name));
            if !(s.name == *h && plan.addresses.contains(&s.ip)) {
                line(&mut out, &s.name, address_kind(s.ip), &s.ip.to_string());
            }
        }
    }

    if let Some((hash, file)) = &plan.tlsa {
        out.push_str(&format!(
            "\n; DANE (RFC 7672): the public key of {} (DANE-EE, SPKI, SHA-256); the zone must\n; be DNSSEC-signed. Publish the next key's record before changing the key.\n",
            file.display()
        ));
        line(&mut out, &format!("_25._tcp.{h}"), "TLSA", &format!("3 1 1 {hash}"));
    }
    out
}
