//! Real HTTP clients for the sending API: curl (Debian package) and the `mailgate api-key`
//! command that makes keys.

use std::process::Command;

use std::time::Duration;

use crate::gateway::{binary, Gateway};
use crate::sink::Sink;
use crate::{free_port, wait_for};

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
    /// The JSON error's pointer.
    pub fn pointer(&self) -> String {
        self.json()["error"]["pointer"].as_str().unwrap_or("<none>").to_string()
    }
}

/// Runs curl with `args`; the answer's status, head and body.
pub fn curl(args: &[&str]) -> Resp {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "60", "-H", "Expect:"])
        .args(args)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {text} {}", String::from_utf8_lossy(&out.stderr)));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    Resp { status, head: head.to_string(), body: body.to_string() }
}

/// `mailgate api-key create` against the gateway's config; the key it prints.
pub fn create_key(gw: &Gateway, name: &str, extra: &[&str]) -> String {
    let out = Command::new(binary())
        .args(["api-key", "create", "--name", name, "--config"])
        .arg(gw.path("mailgate.toml"))
        .args(extra)
        .env_remove("MAILGATE_BIN")
        .output()
        .unwrap();
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success() && key.starts_with("mg_"), "{key} {}", String::from_utf8_lossy(&out.stderr));
    key
}

/// POSTs JSON with curl (the body from a file: 10,000 recipients do not fit in argv).
pub fn post_json(url: &str, key: &str, body: &serde_json::Value) -> Resp {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body.to_string()).unwrap();
    let auth = format!("Authorization: Bearer {key}");
    let data = format!("@{}", file.path().display());
    curl(&["-X", "POST", url, "-H", &auth, "-H", "Content-Type: application/json", "--data-binary", &data])
}

/// GETs with the key.
pub fn get(url: &str, key: &str) -> Resp {
    curl(&[url, "-H", &format!("Authorization: Bearer {key}")])
}

/// A gateway relaying to `sink` with an `[[api]]` listener; returns it and the API's base URL.
pub fn with_api(sink: &Sink, extra: &str) -> (Gateway, String) {
    let port = free_port();
    // `extra` may bring its own `[queue]` table (after the `[[api]]` one).
    let queue = if extra.contains("[queue]") { "" } else { "[queue]\nretry_schedule = [\"1s\"]\n" };
    let gw = Gateway::with_sink(
        sink.port(),
        &format!("{queue}\n[[api]]\nname = \"api\"\naddress = \"127.0.0.1:{port}\"\n{extra}"),
    );
    let up = wait_for(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
    assert!(up.is_some(), "API listener did not come up:\n{}", gw.log());
    (gw, format!("http://127.0.0.1:{port}/api/v1/messages"))
}
