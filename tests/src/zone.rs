//! A DNS server on loopback that serves a test suite's zone data as it is written: every
//! record type SPF asks for, CNAMEs, names that exist without the asked type (NODATA), unknown
//! names (NXDOMAIN), and `TIMEOUT` — a name the server never answers for, which no standard
//! server can be told to do. UDP and TCP, hickory's wire format.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, TXT};
use hickory_resolver::proto::rr::{Label, Name, RData, Record, RecordType};

/// One record of a name, in the suite's order.
#[derive(Debug, Clone)]
pub enum Rr {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Mx(u16, String),
    Ptr(String),
    Cname(String),
    /// A TXT record's strings.
    Txt(Vec<Vec<u8>>),
    /// From here on, the name's look-ups of a type not answered above time out.
    Timeout,
}

/// Names (lower case, no trailing dot) and their records.
#[derive(Debug, Default, Clone)]
pub struct Zone(pub HashMap<String, Vec<Rr>>);

pub struct ZoneDns {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

enum Answer {
    Records(Vec<Record>),
    NxDomain,
    /// Say nothing.
    Silence,
}

/// A name with any octets in its labels (the suite has ':', '/', '%' and spaces in names).
fn name(s: &str) -> Name {
    let labels: Result<Vec<Label>, _> =
        s.trim_end_matches('.').split('.').map(|l| Label::from_raw_bytes(l.as_bytes())).collect();
    let mut n = labels.ok().and_then(|l| Name::from_labels(l).ok()).unwrap_or_else(Name::root);
    n.set_fqdn(true);
    n
}

impl Zone {
    fn rdata(rr: &Rr, t: RecordType) -> Option<RData> {
        Some(match (rr, t) {
            (Rr::A(a), RecordType::A) => RData::A(A(*a)),
            (Rr::Aaaa(a), RecordType::AAAA) => RData::AAAA(AAAA(*a)),
            (Rr::Mx(p, n), RecordType::MX) => RData::MX(MX::new(*p, name(n))),
            (Rr::Ptr(n), RecordType::PTR) => RData::PTR(PTR(name(n))),
            (Rr::Txt(strings), RecordType::TXT) => {
                // Strings over 255 octets are split, as a zone file would have to.
                let chunks: Vec<&[u8]> = strings.iter().flat_map(|s| s.chunks(255)).collect();
                RData::TXT(TXT::from_bytes(if chunks.is_empty() { vec![&b""[..]] } else { chunks }))
            }
            _ => return None,
        })
    }

    fn answer(&self, qname: &str, t: RecordType, depth: u8) -> Answer {
        let key = qname.trim_end_matches('.').to_ascii_lowercase();
        let Some(rrs) = self.0.get(&key) else {
            return if key.starts_with("error.") { Answer::Silence } else { Answer::NxDomain };
        };
        let mut out = vec![];
        for rr in rrs {
            match rr {
                Rr::Timeout if out.is_empty() => return Answer::Silence,
                Rr::Timeout => break,
                Rr::Cname(target) if t != RecordType::CNAME && depth == 0 => {
                    out.push(Record::from_rdata(name(&key), 60, RData::CNAME(CNAME(name(target)))));
                    if let Answer::Records(more) = self.answer(target, t, 1) {
                        out.extend(more);
                    }
                }
                rr => {
                    if let Some(d) = Zone::rdata(rr, t) {
                        out.push(Record::from_rdata(name(&key), 60, d));
                    }
                }
            }
        }
        Answer::Records(out)
    }

    /// The response to a query packet, or none (silence).
    fn respond(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let q = Message::from_vec(packet).ok()?;
        let query = q.queries.first()?.clone();
        let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        r.metadata.authoritative = true;
        r.metadata.recursion_desired = q.metadata.recursion_desired;
        r.metadata.recursion_available = true;
        r.add_query(query.clone());
        let qname: Vec<String> = query.name().iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
        match self.answer(&qname.join("."), query.query_type(), 0) {
            Answer::Silence => return None,
            Answer::NxDomain => r.metadata.response_code = ResponseCode::NXDomain,
            Answer::Records(rs) => {
                r.add_answers(rs);
            }
        }
        r.to_vec().ok()
    }
}

impl ZoneDns {
    /// Serves `zone` on 127.0.0.1 (UDP and TCP, one port) until dropped.
    pub fn start(zone: Zone) -> ZoneDns {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().unwrap().port();
        let tcp = TcpListener::bind(("127.0.0.1", port)).expect("bind tcp on the same port");
        udp.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let zone = Arc::new(zone);
        {
            let (stop, zone) = (stop.clone(), zone.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = udp.recv_from(&mut buf) {
                        if let Some(mut out) = zone.respond(&buf[..n]) {
                            if out.len() > 512 {
                                // Too big for UDP: the truncated header sends the client to TCP.
                                out.truncate(12);
                                out[2] |= 0x02;
                                out[6..12].fill(0);
                            }
                            let _ = udp.send_to(&out, from);
                        }
                    }
                }
            });
        }
        {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((mut s, _)) => {
                            let zone = zone.clone();
                            std::thread::spawn(move || {
                                s.set_nonblocking(false).ok();
                                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                                let mut len = [0u8; 2];
                                while s.read_exact(&mut len).is_ok() {
                                    let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                                    if s.read_exact(&mut q).is_err() {
                                        return;
                                    }
                                    if let Some(out) = zone.respond(&q) {
                                        let mut framed = (out.len() as u16).to_be_bytes().to_vec();
                                        framed.extend(out);
                                        if s.write_all(&framed).is_err() {
                                            return;
                                        }
                                    }
                                }
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        ZoneDns { port, stop }
    }

    /// The `[dns]` table pointing a gateway at this server; `timeout` is what a `TIMEOUT`
    /// name costs.
    pub fn config(&self, timeout: &str) -> String {
        format!("[dns]\nnameservers = [\"127.0.0.1:{}\"]\ntimeout = \"{timeout}\"\nattempts = 1\n", self.port)
    }
}

impl Drop for ZoneDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
