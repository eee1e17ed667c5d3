//! MTA-STS policy hosts: Python's HTTPS server (`http.server` with `ssl`) on port 443 of a
//! loopback address, serving `/.well-known/mta-sts.txt` per `Host` (one server for several
//! `mta-sts.<domain>` names, with one certificate for all). Port 443 needs root. It also takes
//! POSTs (TLS reports) into a directory when given one: `<n>.body`, and the request's
//! `Content-Type` in `<n>.type`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct PolicyServer(Child);

const SERVER: &str = r#"
import http.server, json, ssl, sys
import os, itertools
ip, cert, key, policies = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
uploads = sys.argv[5] if len(sys.argv) > 5 else None
counter = itertools.count()
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        if uploads is None:
            self.send_response(404)
        else:
            i = next(counter)
            with open(os.path.join(uploads, "%d.type" % i), "w") as f:
                f.write(self.headers.get("Content-Type") or "")
            with open(os.path.join(uploads, "%d.body" % i), "wb") as f:
                f.write(body)
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        policy = policies.get(host)
        if self.path == "/.well-known/mta-sts.txt" and policy is not None:
            body = policy.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
        else:
            body = b"not here"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = http.server.ThreadingHTTPServer((ip, 443), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"#;

impl PolicyServer {
    /// Serves each `(host, policy text)` on `ip`:443 with the certificate and key files given.
    pub fn start(ip: &str, cert: &Path, key: &Path, policies: &[(&str, &str)]) -> PolicyServer {
        Self::start_receiving(ip, cert, key, policies, None)
    }

    /// The same, keeping POSTed bodies in `uploads`.
    pub fn start_receiving(
        ip: &str,
        cert: &Path,
        key: &Path,
        policies: &[(&str, &str)],
        uploads: Option<&Path>,
    ) -> PolicyServer {
        let map: serde_json::Map<String, serde_json::Value> =
            policies.iter().map(|(h, p)| (h.to_string(), serde_json::Value::from(*p))).collect();
        let mut child = Command::new("python3")
            .args(["-c", SERVER, ip])
            .arg(cert)
            .arg(key)
            .arg(serde_json::Value::Object(map).to_string())
            .args(uploads)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the policy server did not start (port 443 needs root)");
        PolicyServer(child)
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
