//! The human form of the admin endpoint's answers: what `status`, `queue list|show` and
//! `quarantine list|show` print without `--json` (with it, the JSON as the endpoint gave it).

use serde_json::Value;

/// The human form of an answer, by its shape.
pub fn human(v: &Value) -> String {
    match v {
        Value::Array(items) => list(items),
        Value::Object(o) if o.contains_key("listeners") => status(v),
        Value::Object(o) if o.contains_key("recipients") && o.contains_key("id") => message(v),
        Value::Object(o) if o.contains_key("message") => format!("{}\n", s(&v["message"])),
        _ => format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default()),
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Unix milliseconds as an RFC 5322 date.
fn date_ms(v: &Value) -> String {
    v.as_u64().map(|ms| mailgate_message::date::rfc5322_date(ms / 1000)).unwrap_or_default()
}

/// Why a message is still queued: a pending recipient's last reply, else any's; for a
/// quarantined one, the quarantine reason.
fn why_waiting(m: &Value) -> String {
    if let Some(q) = m["quarantine"].as_str() {
        return format!("quarantine: {q}");
    }
    let rcpts = m["recipients"].as_array().cloned().unwrap_or_default();
    let reply_of = |want: Option<&str>| {
        rcpts.iter().find_map(|r| {
            let status_ok = want.is_none_or(|w| r["status"].as_str() == Some(w));
            r["last_reply"].as_str().filter(|_| status_ok)
        })
    };
    reply_of(Some("pending")).or_else(|| reply_of(None)).unwrap_or("").to_string()
}

fn list(items: &[Value]) -> String {
    let mut out = String::new();
    for m in items {
        let rcpts: Vec<String> = m["recipients"]
            .as_array()
            .map(|a| a.iter().map(|r| format!("{} ({})", s(&r["address"]), s(&r["status"]))).collect())
            .unwrap_or_default();
        out += &format!(
            "{}  {:<8}  attempts {:<3}  <{}> -> {}  {}\n",
            s(&m["id"]),
            s(&m["state"]),
            m["attempts"],
            s(&m["sender"]),
            rcpts.join(", "),
            why_waiting(m)
        );
    }
    out += &format!("{} message(s)\n", items.len());
    out
}

fn message(m: &Value) -> String {
    let mut out = String::new();
    let mut row = |k: &str, v: String| {
        if !v.is_empty() {
            out += &format!("{k:<11}{v}\n");
        }
    };
    row("id", s(&m["id"]).into());
    row("state", s(&m["state"]).into());
    row("sender", format!("<{}>", s(&m["sender"])));
    row("client", s(&m["client"]).into());
    row("received", date_ms(&m["received_at"]));
    let next = match m["next_attempt"].as_u64() {
        Some(n) if n > 0 && s(&m["state"]) != "quarantined" => format!(", next {}", date_ms(&m["next_attempt"])),
        _ => String::new(),
    };
    row("attempts", format!("{}{next}", m["attempts"]));
    row("quarantine", s(&m["quarantine"]).into());
    if let Some(size) = m["size"].as_u64() {
        row("size", format!("{size} octets"));
    }
    out += "recipients:\n";
    for r in m["recipients"].as_array().into_iter().flatten() {
        let host = r["remote_host"].as_str().map(|h| format!("  [{h}]")).unwrap_or_default();
        let class = r["class"].as_str().filter(|c| *c != "other").map(|c| format!("  ({c})")).unwrap_or_default();
        out += &format!("  {}  {}  {}{host}{class}\n", s(&r["address"]), s(&r["status"]), s(&r["last_reply"]));
    }
    if let Some(h) = m["header"].as_str() {
        out += "header:\n";
        for l in h.lines() {
            out += &format!("  {l}\n");
        }
    }
    out
}

fn status(v: &Value) -> String {
    let mut out = format!("mailgate {}\n", s(&v["version"]));
    out += "listeners:\n";
    for l in v["listeners"].as_array().into_iter().flatten() {
        out += &format!(
            "  {:<12} {:<22} role {:<12} pipeline {}\n",
            s(&l["name"]),
            s(&l["address"]),
            s(&l["role"]),
            s(&l["pipeline"])
        );
    }
    let plugins = v["plugins"].as_array().cloned().unwrap_or_default();
    out += if plugins.is_empty() { "plugins: none\n" } else { "plugins:\n" };
    for p in &plugins {
        out += &format!("  {:<16} {}", s(&p["name"]), s(&p["fingerprint"]));
        if let Some(idle) = p["idle_instances"].as_u64().filter(|n| *n > 0) {
            out += &format!(", {idle} idle instance(s)");
        }
        let unused: Vec<&str> = p["not_called_at"].as_array().into_iter().flatten().map(s).collect();
        if !unused.is_empty() {
            out += &format!(", no code at {}", unused.join(" "));
        }
        out += "\n";
    }
    let counts: Vec<String> =
        v["queue"].as_object().map(|q| q.iter().map(|(state, n)| format!("{n} {state}")).collect()).unwrap_or_default();
    out += &format!("queue: {}\n", if counts.is_empty() { "empty".to_string() } else { counts.join(", ") });
    if let Some(seq) = v["events"].as_u64() {
        out += &format!("events: up to #{seq}\n");
    }
    for w in v["webhooks"].as_array().into_iter().flatten() {
        out += &format!("webhook {}: {} event(s) behind\n", s(&w["name"]), w["backlog"]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_forms() {
        let st = serde_json::json!({"version": "0.1.0", "listeners": [{"name": "mx", "address": "127.0.0.1:25",
            "role": "mx", "pipeline": "default"}], "plugins": [], "queue": {"deferred": 2}, "events": null, "webhooks": []});
        let t = human(&st);
        assert!(t.contains("mx") && t.contains("plugins: none") && t.contains("queue: 2 deferred"), "{t}");
        assert!(!t.contains('{'), "not JSON: {t}");
        let st = serde_json::json!({"listeners": [], "queue": {}, "plugins": [
            {"name": "spf", "fingerprint": "00ff", "not_called_at": ["connect", "helo"], "idle_instances": 3},
            {"name": "memo", "fingerprint": "11ee", "not_called_at": [], "idle_instances": 0}]});
        let t = human(&st);
        assert!(t.contains("  spf              00ff, 3 idle instance(s), no code at connect helo\n"), "{t}");
        assert!(t.contains("  memo             11ee\n"), "{t}");
        let m = serde_json::json!({"id": "Q1", "state": "deferred", "sender": "", "received_at": 0u64, "attempts": 1,
            "next_attempt": 60_000u64, "recipients": [{"address": "a@x.test", "status": "delivered", "last_reply": "250 ok"},
            {"address": "b@x.test", "status": "pending", "last_reply": "451 4.3.0 later", "remote_host": "mx.x.test"}]});
        let t = human(&m);
        assert!(
            t.contains("sender     <>\n") && t.contains("attempts   1, next Thu, 01 Jan 1970 00:01:00 +0000"),
            "{t}"
        );
        assert!(t.contains("  b@x.test  pending  451 4.3.0 later  [mx.x.test]\n"), "{t}");
        let l = human(&Value::Array(vec![m]));
        assert!(l.contains("451 4.3.0 later") && !l.contains("250 ok") && l.ends_with("1 message(s)\n"), "{l}");
        assert_eq!(human(&serde_json::json!({"ok": true, "message": "done"})), "done\n");
    }
}
