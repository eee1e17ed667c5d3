//! mailgate-bench: an SMTP load generator with a fast sink and a /proc meter, to measure
//! mailgate and its peers (Postfix, Haraka) under the same load in the same run.
//!
//! `mailgate-bench run --target GW --sink 127.0.0.1:PORT …` starts the sink in-process, sends
//! through the gateway (which relays to the sink), and reports delivered msg/s, CPU µs per
//! message of the gateway's processes, and MAIL→250 latency percentiles. Without `--target`
//! it sends straight into its own sink: the ceiling. With `--api URL --key K` the messages go in
//! through the HTTP sending API instead (keep-alive connections, JSON bodies). Every run is
//! bounded in count and time.

mod load;
mod procstat;
mod sink;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mailgate-bench", about = "SMTP load generator and sink")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send a bounded load and report throughput, CPU and latency.
    Run(Box<RunArgs>),
    /// Run only the sink (counts what arrives) until killed.
    Sink {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Open idle sessions (after EHLO) and report the RSS of a process.
    Idle {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value = "3")]
        hold_secs: u64,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The gateway (or peer) to send to; omitted: straight into the sink (the ceiling).
    #[arg(long)]
    target: Option<SocketAddr>,
    /// Where to run the sink the target relays to.
    #[arg(long, default_value = "127.0.0.1:0")]
    sink: SocketAddr,
    #[arg(long, default_value_t = 50)]
    sessions: usize,
    #[arg(long, default_value_t = 5000)]
    count: u64,
    /// Stop sending after this many seconds even if `count` is not reached.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Message size in octets.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    #[arg(long, default_value_t = 1)]
    rcpts: usize,
    /// Offered rate (msg/s) for an open-loop run.
    #[arg(long)]
    rate: Option<f64>,
    /// A new connection for every message.
    #[arg(long)]
    new_conn: bool,
    /// Send this message file (e.g. a DKIM-signed one) instead of a made-up one of `--size`.
    #[arg(long)]
    message: Option<std::path::PathBuf>,
    /// Recipient domain.
    #[arg(long, default_value = "bench.test")]
    domain: String,
    /// Processes whose CPU time is measured: pids…
    #[arg(long)]
    pid: Vec<u32>,
    /// …and/or command names (e.g. smtpd, cleanup, qmgr, smtp for Postfix).
    #[arg(long)]
    comm: Vec<String>,
    /// How long to wait for the sink to see every accepted message.
    #[arg(long, default_value_t = 60)]
    drain: u64,
    /// A label for the report line.
    #[arg(long, default_value = "run")]
    label: String,
    /// Send through the HTTP sending API at this URL (…/api/v1/messages) instead of SMTP: JSON
    /// with a text of `--size`, or with `--message` that file as a raw message (message/rfc822).
    #[arg(long)]
    api: Option<String>,
    /// The API key for `--api`.
    #[arg(long, default_value = "")]
    key: String,
    /// With `--api` and JSON: this many messages per request, through `…/batch`.
    #[arg(long, default_value_t = 1)]
    batch: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        match cli.cmd {
            Cmd::Run(a) => run(*a).await,
            Cmd::Sink { listen } => {
                let (addr, c) = sink::start(listen).await?;
                eprintln!("sink on {addr}");
                // A line whenever the count moved (looked at ten times a second): scripts that
                // drive another client wait on it for every message to arrive.
                let mut last = 0;
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let n = c.messages.load(Ordering::Relaxed);
                    if n != last {
                        eprintln!("sink: {n} messages");
                        last = n;
                    }
                }
            }
            Cmd::Idle { target, sessions, pid, hold_secs } => {
                let before = procstat::rss_kib(pid).unwrap_or(0);
                let handle = tokio::spawn(load::idle(target, sessions, Duration::from_secs(hold_secs)));
                tokio::time::sleep(Duration::from_secs(hold_secs.saturating_sub(1).max(1))).await;
                let during = procstat::rss_kib(pid).unwrap_or(0);
                let opened = handle.await?;
                println!(
                    "{{\"idle_sessions\":{opened},\"rss_before_kib\":{before},\"rss_idle_kib\":{during},\"rss_idle_mib\":{:.1}}}",
                    during as f64 / 1024.0
                );
                Ok(())
            }
        }
    })
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let (sink_addr, counters) = sink::start(a.sink).await?;
    let target = a.target.unwrap_or(sink_addr);
    let (user0, sys0) = procstat::cpu_split(&a.pid, &a.comm);
    // This process's own CPU (load generator and sink): on a small machine it competes with
    // the process under test, so a heavier client lowers the rate the gateway is measured at.
    let me = [std::process::id()];
    let own0 = procstat::cpu_seconds(&me, &[]);
    let load = load::Load {
        target,
        sessions: a.sessions,
        count: a.count,
        duration: Duration::from_secs(a.duration),
        size: a.size,
        rcpts: a.rcpts,
        rate: a.rate,
        new_conn: a.new_conn,
        domain: a.domain.clone(),
        message: a.message.as_ref().map(std::fs::read).transpose()?,
        batch: a.batch,
    };
    // The peak resident size of the first measured process, sampled while the load runs.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = a.pid.first().copied().map(|pid| {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some(kib) = procstat::rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    let rss_before = a.pid.first().and_then(|p| procstat::rss_kib(*p)).unwrap_or(0);
    let out = match a.api.clone() {
        Some(url) => {
            let target = load::ApiTarget::parse(&url)
                .ok_or_else(|| anyhow::anyhow!("--api {url:?}: give http://IP:PORT/PATH"))?;
            load::run_api(load, target, a.key.clone()).await
        }
        None => load::run(load).await,
    };
    // Wait until the sink has every accepted message (a relay delivers after its 250).
    let want = out.accepted;
    let drain_end = Instant::now() + Duration::from_secs(a.drain);
    let mut delivered_at = Instant::now();
    loop {
        let got = counters.messages.load(Ordering::Relaxed);
        if got >= want {
            delivered_at = if got > 0 { Instant::now().max(out.last_reply) } else { delivered_at };
            break;
        }
        if Instant::now() > drain_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let delivered = counters.messages.load(Ordering::Relaxed);
    let (user1, sys1) = procstat::cpu_split(&a.pid, &a.comm);
    let (user, sys) = (user1 - user0, sys1 - sys0);
    let cpu = user + sys;
    let own = procstat::cpu_seconds(&me, &[]) - own0;
    if let Some(s) = sampler {
        s.abort();
    }
    // And what stays resident a little after the burst (memory given back or not).
    let rss_after = match a.pid.first() {
        Some(p) => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            procstat::rss_kib(*p).unwrap_or(0)
        }
        None => 0,
    };
    let mib = |kib: u64| (kib as f64 / 102.4).round() / 10.0;
    let elapsed = delivered_at.duration_since(out.first_send).as_secs_f64();
    let h = &out.latency;
    let report = serde_json::json!({
        "label": a.label,
        "size": a.size,
        "sessions": a.sessions,
        "rcpts": a.rcpts,
        "rate": a.rate,
        "new_conn": a.new_conn,
        "accepted": out.accepted,
        "failed": out.failed,
        "delivered": delivered,
        "seconds": (elapsed * 1000.0).round() / 1000.0,
        "msg_per_s": if elapsed > 0.0 { (delivered as f64 / elapsed).round() } else { 0.0 },
        "cpu_us_per_msg": if delivered > 0 && (!a.pid.is_empty() || !a.comm.is_empty()) { (cpu * 1e6 / delivered as f64).round() } else { 0.0 },
        "user_us_per_msg": if delivered > 0 { (user * 1e6 / delivered as f64).round() } else { 0.0 },
        "sys_us_per_msg": if delivered > 0 { (sys * 1e6 / delivered as f64).round() } else { 0.0 },
        "bench_cpu_us_per_msg": if delivered > 0 { (own * 1e6 / delivered as f64).round() } else { 0.0 },
        "p50_us": h.value_at_quantile(0.5),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "rss_before_mib": mib(rss_before),
        "rss_peak_mib": mib(peak.load(Ordering::Relaxed)),
        "rss_after_mib": mib(rss_after),
    });
    println!("{report}");
    if delivered < want {
        eprintln!("mailgate-bench: only {delivered} of {want} accepted messages reached the sink within {}s", a.drain);
        std::process::exit(2);
    }
    Ok(())
}
