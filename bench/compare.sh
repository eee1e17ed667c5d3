#!/usr/bin/env bash
# Runs the same SMTP load through mailgate (0 and 5 plugins, and mailgate-real: the edge-MX
# pipeline of config/examples/edge-mx.toml — DNSBL, SPF, DKIM, DMARC, a trained spam model,
# Ed25519 signing — against a local DNS server, with DKIM-signed mail), Postfix and Haraka,
# relaying to the same sink, plus the sink alone (the ceiling), in one run on one machine;
# prints a markdown table of medians and the ratios. Every peer is started and stopped here; nothing
# is left running. Needs root (Postfix uses /etc/postfix) and the packages from
# scripts/deps.sh; Haraka is installed from npm into bench/.peers/ on first use.
#
#   bench/compare.sh                 # full matrix: 1 KiB, 10 KiB, 100 KiB; 50 sessions; 3 runs
#   RUNS=1 SIZES=1024 bench/compare.sh    # quicker
#   PEERS="mailgate0 mailgate5" …    # a subset of: ceiling mailgate0 mailgate5 mailgate-real
#                                    # postfix haraka
#   MODES="persistent newconn"       # persistent sessions, and/or a new connection per message
#                                    # (how most MX traffic arrives)
#   INSTRUCTIONS=1 bench/compare.sh  # mailgate0 and mailgate5 (or PEERS=… of the mailgate
#                                    # peers) under callgrind: user-space instructions per
#                                    # message, 2 000 persistent / 500 new-connection messages
#                                    # (COUNT=…), the same from run to run on a noisy machine;
#                                    # KEEP=dir keeps the callgrind dumps
#   PERFSTAT=1 bench/compare.sh      # the mailgate peers' CPU split per message: user and
#                                    # system µs, minor page faults, context switches and
#                                    # system calls (perf's software counters; this VM has no
#                                    # hardware ones), 20 000 persistent / 5 000 new-connection
#                                    # messages (COUNT=…) after a warm-up
#   PERFSTAT=1 PROFILE=dir …         # and a perf profile of each measured load (cpu-clock,
#                                    # 997 Hz): dir/perf.<peer>@<mode>.data for `perf report`
#   PERFSTAT=1 CLIENT=smtp-source …  # the same with Postfix's smtp-source as the client (50
#                                    # sessions; -d for persistent) and mailgate-bench's sink
#   MG=/path/to/mailgate DIST=/path/to/plugins/dist …  # another build, with plugins built
#                                    # against its own WIT (a build at another commit)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
RUNS=${RUNS:-3}
SIZES=${SIZES:-$([ -n "${INSTRUCTIONS:-}${PERFSTAT:-}" ] && echo 1024 || echo "1024 10240 102400")}
SESSIONS=${SESSIONS:-50}
INSTRUCTIONS=${INSTRUCTIONS:-}
PERFSTAT=${PERFSTAT:-}
if [ -n "$PERFSTAT" ]; then PEERS=${PEERS:-"mailgate0 mailgate5"}; fi
if [ -n "$INSTRUCTIONS" ]; then
    PEERS=${PEERS:-"mailgate0 mailgate5"}
    # The plugin instance pool reserves address space per session slot: fewer slots under
    # valgrind, which cannot map the full reservation.
    MAX_SESSIONS=100
fi
PEERS=${PEERS:-"ceiling mailgate0 mailgate5 mailgate-real postfix haraka"}
MAX_SESSIONS=${MAX_SESSIONS:-2000}
MODES=${MODES:-"persistent newconn"}
SINK=${SINK_PORT:-25250}
MG_PORT=25251 PF_PORT=25252 HK_PORT=25253 DNS_PORT=25254
work=$(mktemp -d /tmp/mailgate-compare.XXXXXX)
mg_pid=""
hk_pid=""
dns_pid=""
sink_pid=""

cleanup() {
    [ -n "$mg_pid" ] && kill "$mg_pid" 2>/dev/null && wait "$mg_pid" 2>/dev/null || true
    [ -n "$dns_pid" ] && kill "$dns_pid" 2>/dev/null && wait "$dns_pid" 2>/dev/null || true
    [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null && wait "$sink_pid" 2>/dev/null || true
    [ -n "$hk_pid" ] && kill "$hk_pid" 2>/dev/null && wait "$hk_pid" 2>/dev/null || true
    postfix stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

wait_port() { # port, log file to show on failure
    for _ in $(seq 1200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done
    [ -n "${2:-}" ] && cat "$2" >&2
    echo "nothing listens on port $1" >&2; exit 1
}

count_for() { case $1 in 1024) echo 30000 ;; 10240) echo 15000 ;; *) echo 3000 ;; esac; }

echo "building (release)…" >&2
cargo build --release --locked -p mailgate -p mailgate-bench >&2
plugins/build.sh >&2
BENCH=$root/target/release/mailgate-bench
MG=${MG:-$root/target/release/mailgate}  # MG=/path/to/mailgate compares another build
DIST=${DIST:-$root/plugins/dist}  # and the plugins built for it

mailgate_config() { # $1 = number of plugins (0 or 5), or "-real"
    cat <<TOML
[server]
hostname = "mailgate.bench"
allow_root = true
[[listener]]
name = "mx"
address = "127.0.0.1:$MG_PORT"
[limits]
max_sessions = $MAX_SESSIONS
max_sessions_per_ip = $MAX_SESSIONS
max_sessions_per_net = $MAX_SESSIONS
[spool]
path = "$work/mg-spool"
[relay]
accept_domains = ["bench.test"]
[routes]
"*" = { type = "smarthost", host = "127.0.0.1", port = $SINK, tls = "none" }
[log]
level = "warn"
TOML
    if [ "$1" = 5 ]; then
        local d=$DIST
        cat <<TOML
[[plugin]]
name = "helo-check"
path = "$d/helo-check.wasm"
[[plugin]]
name = "rcpt-allow"
path = "$d/rcpt-allow.wasm"
[plugin.config]
domains = ["bench.test"]
check_trusted = true
[[plugin]]
name = "add-header"
path = "$d/add-header.wasm"
[[plugin]]
name = "route-by-domain"
path = "$d/route-by-domain.wasm"
[plugin.config]
routes = ["other.test=discard"]
[[plugin]]
name = "verdict"
path = "$d/verdict.wasm"
[plugin.config]
stage = "auth"
verdict = "reject"
TOML
    fi
    if [ "$1" = -real ]; then
        local d=$DIST
        cat <<TOML
[dns]
nameservers = ["127.0.0.1:$DNS_PORT"]
[[dkim_sign]]
domain = "bench.test"
selector = "ed"
key = "$work/real/sign-ed25519.pem"
sign_for = "any"
[[plugin]]
name = "dnsbl"
path = "$d/dnsbl.wasm"
stages = ["connect"]
grants = ["dns"]
[plugin.config]
stage = "score"
zones = ["zen.bl.test=3", "bl.spamcop.test=1.5"]
[[plugin]]
name = "spf"
path = "$d/spf.wasm"
stages = ["rcpt"]
[plugin.config]
fail = "reject"
softfail = "mark"
[[plugin]]
name = "dkim"
path = "$d/dkim.wasm"
stages = ["data"]
[[plugin]]
name = "dmarc"
path = "$d/dmarc.wasm"
stages = ["data"]
[[plugin]]
name = "spam"
path = "$d/spam.wasm"
stages = ["data"]
data = { model = "$root/bench/.corpus/model.tsv" }
[plugin.config]
quarantine_at = 5.0
reject_at = 12.0
TOML
    fi
}

# mailgate-real's world, made once per run: a trained spam model (bench/spam-eval.sh fetches
# the SpamAssassin corpus once), an RSA key the sender signs with and an Ed25519 key the
# gateway signs with, dnsmasq authoritative for `test` answering SPF, DKIM and DMARC for
# bench.test and NXDOMAIN (with the SOA, so cacheable as real servers make it) for the DNSBL
# zones and DMARC's tree walk, TTLs 5 min, and DKIM-signed messages of each size (dkimpy).
setup_real() {
    [ -f "$work/real/ready" ] && return 0
    mkdir -p "$work/real"
    [ -f bench/.corpus/model.tsv ] || bench/spam-eval.sh >&2
    openssl genrsa -out "$work/real/sender.pem" 2048 2>/dev/null
    local pub
    pub=$(openssl rsa -in "$work/real/sender.pem" -pubout -outform DER 2>/dev/null | base64 -w0)
    "$MG" dkim keygen --domain bench.test --selector ed --algorithm ed25519 \
        --out "$work/real/sign-ed25519.pem" >/dev/null
    # A TXT record's strings are at most 255 octets: the key in pieces, commas between.
    local dkim="v=DKIM1; k=rsa; p=$pub" txt=""
    while [ -n "$dkim" ]; do txt+="${txt:+,}${dkim:0:250}"; dkim=${dkim:250}; done
    /usr/sbin/dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
        --bind-interfaces --listen-address=127.0.0.1 --port="$DNS_PORT" --pid-file= --user=root \
        --auth-server=ns.test,lo --auth-zone=test --auth-ttl=300 \
        --auth-soa=1,hostmaster.test,1200,120,604800,300 --log-facility=- \
        "--txt-record=bench.test,v=spf1 ip4:127.0.0.0/8 -all" \
        "--txt-record=_dmarc.bench.test,v=DMARC1; p=reject" \
        "--txt-record=rsa._domainkey.bench.test,$txt" >/dev/null 2>&1 &
    dns_pid=$!
    for size in $SIZES; do
        /usr/bin/python3 - "$work/real/sender.pem" "$size" > "$work/real/msg-$size.eml" <<'PY'
import dkim, sys
key, size = open(sys.argv[1], "rb").read(), int(sys.argv[2])
m = b"From: <bench@bench.test>\r\nTo: <sink@bench.test>\r\nSubject: mailgate-bench\r\nMessage-ID: <bench@bench.test>\r\n\r\n"
line = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmn\r\n"
while len(m) < size:
    m += line
sig = dkim.sign(m, b"rsa", b"bench.test", key, include_headers=[b"from", b"to", b"subject", b"message-id"])
sys.stdout.buffer.write(sig + m)
PY
    done
    touch "$work/real/ready"
}

start_mailgate() { # $1 = plugins (0, 5 or -real)
    rm -rf "$work/mg-spool"
    mailgate_config "$1" > "$work/mailgate.toml"
    if [ -n "$INSTRUCTIONS" ]; then
        rm -f "$work"/cg.out*
        valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" --dump-instr=no \
            "$MG" serve --config "$work/mailgate.toml" 2>"$work/mailgate.log" &
    else
        "$MG" serve --config "$work/mailgate.toml" 2>"$work/mailgate.log" &
    fi
    mg_pid=$!
    wait_port "$MG_PORT" "$work/mailgate.log"
}

# INSTRUCTIONS=1: a warm-up, then the counters zeroed, COUNT messages sent and the gateway's
# user-space instructions per message printed (its every thread, from the callgrind dump).
instructions() { # label size count target-args…
    local label=$1 size=$2 count=$3; shift 3
    local new=()
    [ "$mode" = newconn ] && new=(--new-conn)
    "$BENCH" run --size "$size" --sessions "$SESSIONS" --count 300 --drain 600 --sink "127.0.0.1:$SINK" \
        "${new[@]}" "$@" >/dev/null
    callgrind_control -z "$mg_pid" >/dev/null
    "$BENCH" run --size "$size" --sessions "$SESSIONS" --count "$count" --drain 600 --sink "127.0.0.1:$SINK" \
        "${new[@]}" "$@" >/dev/null
    callgrind_control -d "$label" "$mg_pid" >/dev/null
    local dump=""
    for _ in $(seq 100); do
        dump=$(grep -l "^desc: Trigger: dump $label\$" "$work"/cg.out* 2>/dev/null || true)
        [ -n "$dump" ] && break
        sleep 0.1
    done
    [ -n "$dump" ] || { echo "no callgrind dump for $label" >&2; exit 1; }
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$dump" "$KEEP/cg.$label"; fi
    echo "| $size | $mode | ${label%@*} | $(( $(awk '/^summary:/ {print $2}' "$dump") / count )) |"
}

# PERFSTAT=1: a warm-up, then COUNT messages with the gateway's counters read before and after.
# Context switches of the gateway's threads, summed by thread name ("name count" lines).
thread_switches() {
    for t in /proc/"$mg_pid"/task/*; do
        printf '%s %s\n' "$(tr ' ' _ < "$t/comm")" \
            "$(awk '/ctxt_switches/ {n += $2} END {print n}' "$t/status" 2>/dev/null || echo 0)"
    done | awk '{n[$1] += $2} END {for (k in n) print k, n[k]}' | sort
}

# CLIENT=smtp-source: Postfix's generator sends, mailgate-bench's sink receives, and a load
# ends when the sink has every message (its count is logged as it moves; bounded wait).
source_load() { # count size
    local persist=()
    [ "$mode" = persistent ] && persist=(-d)
    smtp-source -s "$SESSIONS" -m "$1" -l "$2" "${persist[@]}" -f bench@bench.test -t rcpt@bench.test \
        "127.0.0.1:$MG_PORT"
    sent=$((sent + $1))
    for _ in $(seq 6000); do
        [ "$(sed -n 's/^sink: \([0-9]*\) messages$/\1/p' "$work/sink.log" | tail -1)" -ge "$sent" ] 2>/dev/null && return 0
        sleep 0.1
    done
    echo "the sink did not see $sent messages" >&2; exit 1
}

perfstat() { # label size count target-args…
    local label=$1 size=$2 count=$3; shift 3
    local new=()
    [ "$mode" = newconn ] && new=(--new-conn)
    if [ "${CLIENT:-}" = smtp-source ]; then
        "$BENCH" sink --listen "127.0.0.1:$SINK" 2>"$work/sink.log" &
        sink_pid=$!
        sent=0
        wait_port "$SINK"
        source_load 2000 "$size"
    else
        "$BENCH" run --size "$size" --sessions "$SESSIONS" --count 2000 --drain 600 --sink "127.0.0.1:$SINK" \
            "${new[@]}" "$@" >/dev/null
    fi
    local u0 s0 u1 s1
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$mg_pid/stat")
    thread_switches > "$work/switches.0"
    perf stat -x, -e page-faults,context-switches,raw_syscalls:sys_enter -p "$mg_pid" -o "$work/perf.txt" &
    local perf_pid=$! rec_pid=""
    # perf attaches in the background: wait until it has opened its counters (bounded).
    for _ in $(seq 50); do [ -s "$work/perf.txt" ] && break; sleep 0.1; done
    if [ -n "${PROFILE:-}" ]; then
        mkdir -p "$PROFILE"
        perf record -q -F 997 -p "$mg_pid" -o "$PROFILE/perf.$label.data" 2>/dev/null &
        rec_pid=$!
    fi
    if [ "${CLIENT:-}" = smtp-source ]; then
        source_load "$count" "$size"
        kill "$sink_pid"; wait "$sink_pid" 2>/dev/null || true
        sink_pid=""
    else
        "$BENCH" run --size "$size" --sessions "$SESSIONS" --count "$count" --drain 600 --sink "127.0.0.1:$SINK" \
            "${new[@]}" "$@" >/dev/null
    fi
    kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
    if [ -n "$rec_pid" ]; then kill -INT "$rec_pid"; wait "$rec_pid" 2>/dev/null || true; fi
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$mg_pid/stat")
    # By thread, on stderr: which threads switch (threads that ended in between are not seen).
    thread_switches | join -a1 - "$work/switches.0" |
        awk -v n="$count" -v l="$label" '{d = $2 - $3; if (d / n >= 0.05) printf "  %s %s: %.2f switches/msg\n", l, $1, d / n}' >&2
    local tick=$(( 1000000 / $(getconf CLK_TCK) ))
    awk -F, -v n="$count" -v u=$(( (u1 - u0) * tick )) -v s=$(( (s1 - s0) * tick )) -v l="${label%@*}" -v m="$mode" -v z="$size" '
        $3 == "page-faults" {pf = $1} $3 == "context-switches" {cs = $1} $3 == "raw_syscalls:sys_enter" {sc = $1}
        END {printf "| %s | %s | %s | %.0f | %.0f | %.2f | %.2f | %.2f |\n", z, m, l, u / n, s / n, pf / n, cs / n, sc / n}' \
        "$work/perf.txt"
}

stop_mailgate() { kill "$mg_pid"; wait "$mg_pid" 2>/dev/null || true; mg_pid=""; }

setup_postfix() {
    postfix stop >/dev/null 2>&1 || true
    # Debian's package installs no main.cf with "No configuration": start from an empty one.
    [ -f /etc/postfix/main.cf ] || : > /etc/postfix/main.cf
    [ -f /etc/postfix/master.cf ] || cp /usr/share/postfix/master.cf.dist /etc/postfix/master.cf
    postconf -e inet_interfaces=loopback-only inet_protocols=ipv4 mydestination= \
        mynetworks=127.0.0.0/8 "default_transport=smtp:[127.0.0.1]:$SINK" \
        "relay_transport=smtp:[127.0.0.1]:$SINK" "smtpd_relay_restrictions=permit_mynetworks, reject" \
        default_process_limit=200 in_flow_delay=0 smtp_tls_security_level=none \
        smtpd_tls_security_level=none compatibility_level=3.6 \
        myhostname=postfix.bench
    sed -i -E '/^[^#[:space:]]*[[:space:]]+inet[[:space:]].*smtpd$/d' /etc/postfix/master.cf
    echo "127.0.0.1:$PF_PORT inet n - y - - smtpd" >> /etc/postfix/master.cf
    postsuper -d ALL >/dev/null 2>&1 || true
    postfix start >/dev/null 2>&1
    wait_port "$PF_PORT"
}

setup_haraka() {
    local dir=$root/bench/.peers/haraka
    if [ ! -x "$dir/node_modules/.bin/haraka" ]; then
        mkdir -p "$dir"
        cat > "$dir/package.json" <<JSON
{ "private": true, "dependencies": { "Haraka": "3.3.x" },
  "overrides": { "encoding-japanese": "2.4.0", "libqp": "2.1.2" } }
JSON
        (cd "$dir" && npm install --no-audit --no-fund --loglevel=error >&2)
    fi
    rm -rf "$work/haraka"
    "$dir/node_modules/.bin/haraka" -i "$work/haraka" >/dev/null
    local c=$work/haraka/config
    printf 'listen=127.0.0.1:%s\nnodes=cpus\n' "$HK_PORT" > "$c/smtp.ini"
    printf 'rcpt_to.in_host_list\nqueue/smtp_forward\n' > "$c/plugins"
    echo "bench.test" > "$c/host_list"
    printf 'host=127.0.0.1\nport=%s\nenable_tls=false\n' "$SINK" > "$c/smtp_forward.ini"
    echo "LOGWARN" > "$c/loglevel"
    NODE_CLUSTER_SCHED_POLICY=none "$dir/node_modules/.bin/haraka" -c "$work/haraka" >"$work/haraka.log" 2>&1 &
    hk_pid=$!
    wait_port "$HK_PORT" "$work/haraka.log"
}

run() { # label size target-args…  (uses $mode)
    local label=$1 size=$2; shift 2
    local new=()
    [ "$mode" = newconn ] && new=(--new-conn)
    "$BENCH" run --label "$label@$mode" --size "$size" --sessions "$SESSIONS" --count "$(count_for "$size")" \
        --duration 15 --drain 120 --sink "127.0.0.1:$SINK" "${new[@]}" "$@"
}

if [ -n "$PERFSTAT" ]; then
    echo "| size | mode | peer | user µs/msg | system µs/msg | page faults/msg | context switches/msg | system calls/msg |"
    echo "|---|---|---|---|---|---|---|---|"
    for size in $SIZES; do
        for mode in $MODES; do
            count=${COUNT:-$([ "$mode" = newconn ] && echo 5000 || echo 20000)}
            for peer in $PEERS; do
                case $peer in
                    mailgate0|mailgate5) start_mailgate "${peer#mailgate}" ;;
                    mailgate-real) [ -z "${CLIENT:-}" ] || { echo "CLIENT=smtp-source cannot send mailgate-real's signed mail" >&2; exit 1; }
                        setup_real; start_mailgate -real ;;
                    *) echo "PERFSTAT=1 measures the mailgate peers only, not $peer" >&2; exit 1 ;;
                esac
                msg=()
                [ "$peer" = mailgate-real ] && msg=(--message "$work/real/msg-$size.eml")
                perfstat "$peer@$mode" "$size" "$count" --target "127.0.0.1:$MG_PORT" "${msg[@]}"
                stop_mailgate
            done
        done
    done
    exit 0
fi

if [ -n "$INSTRUCTIONS" ]; then
    echo "| size | mode | peer | user-space instructions per message (callgrind) |"
    echo "|---|---|---|---|"
    for size in $SIZES; do
        for mode in $MODES; do
            count=${COUNT:-$([ "$mode" = newconn ] && echo 500 || echo 2000)}
            for peer in $PEERS; do
                case $peer in
                    mailgate0|mailgate5) start_mailgate "${peer#mailgate}" ;;
                    mailgate-real) setup_real; start_mailgate -real ;;
                    *) echo "INSTRUCTIONS=1 measures the mailgate peers only, not $peer" >&2; exit 1 ;;
                esac
                msg=()
                [ "$peer" = mailgate-real ] && msg=(--message "$work/real/msg-$size.eml")
                instructions "$peer@$mode" "$size" "$count" --target "127.0.0.1:$MG_PORT" "${msg[@]}"
                stop_mailgate
            done
        done
    done
    exit 0
fi

results=$work/results.jsonl
: > "$results"
for size in $SIZES; do
    for r in $(seq "$RUNS"); do
      for mode in $MODES; do
        for peer in $PEERS; do
            echo "size $size run $r $mode: $peer" >&2
            case $peer in
                ceiling) run ceiling "$size" ;;
                mailgate0|mailgate5)
                    start_mailgate "${peer#mailgate}"
                    run "$peer" "$size" --target "127.0.0.1:$MG_PORT" --pid "$mg_pid"
                    stop_mailgate ;;
                mailgate-real)
                    setup_real
                    start_mailgate -real
                    run "$peer" "$size" --target "127.0.0.1:$MG_PORT" --pid "$mg_pid" \
                        --message "$work/real/msg-$size.eml"
                    stop_mailgate ;;
                postfix)
                    setup_postfix
                    run postfix "$size" --target "127.0.0.1:$PF_PORT" \
                        --comm master --comm smtpd --comm cleanup --comm qmgr --comm smtp --comm trivial-rewrite
                    postfix stop >/dev/null 2>&1 ;;
                haraka)
                    setup_haraka
                    run haraka "$size" --target "127.0.0.1:$HK_PORT" --comm node --comm haraka
                    kill "$hk_pid"; wait "$hk_pid" 2>/dev/null || true; hk_pid="" ;;
            esac
        done
      done
    done
done >> "$results"

echo "raw results (one JSON line per run):"
sed 's/^/    /' "$results"
echo
table=$work/table.md
python3 - "$results" "$RUNS" > "$table" <<'PY'
import json, os, statistics, sys, time
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem_gib = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0) / 2**20
print(f"Machine: {cpu_model}, {os.cpu_count()} cores, {mem_gib:.0f} GiB; "
      f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
      f"{os.environ.get('SESSIONS', '50')} sessions; medians of {sys.argv[2]} run(s) per cell.\n")
by = {}
for r in rows:
    peer, _, mode = r["label"].partition("@")
    by.setdefault((r["size"], mode or "persistent", peer), []).append(r)
med = lambda xs: statistics.median(xs)
order = ["ceiling", "mailgate0", "mailgate5", "mailgate-real", "postfix", "haraka"]
rank = lambda p: order.index(p) if p in order else len(order)
print("| size | mode | peer | msg/s | CPU µs/msg | p50 ms | p99 ms | vs Postfix | vs ceiling |")
print("|---|---|---|---|---|---|---|---|---|")
for size, mode in sorted({k[:2] for k in by}, key=lambda k: (k[0], k[1] != "persistent")):
    m = {p: med([r["msg_per_s"] for r in rs]) for (s, md, p), rs in by.items() if (s, md) == (size, mode)}
    for peer in sorted(m, key=rank):
        rs = by[(size, mode, peer)]
        rate = m[peer]
        vp = f"{rate / m['postfix']:.1f}×" if m.get("postfix") else "–"
        vc = f"{100 * rate / m['ceiling']:.0f} %" if m.get("ceiling") else "–"
        # The ceiling is our own generator and sink: no gateway process to measure.
        cpu = "–" if peer == "ceiling" else f"{med([r['cpu_us_per_msg'] for r in rs]):.0f}"
        print(f"| {size} | {mode} | {peer} | {rate:.0f} | {cpu} | {med([r['p50_us'] for r in rs])/1000:.2f} | "
              f"{med([r['p99_us'] for r in rs])/1000:.2f} | {vp} | {vc} |")
PY
cat "$table"
# UPDATE=1: the table replaces the one between the markers in BENCHMARKS.md (never edited by hand).
if [ "${UPDATE:-0}" = 1 ]; then
    python3 - "$table" "$root/BENCHMARKS.md" <<'PY'
import sys
table, path = open(sys.argv[1]).read().strip(), sys.argv[2]
text = open(path).read()
begin, end = "<!-- compare.sh:begin -->", "<!-- compare.sh:end -->"
if begin not in text or end not in text:
    sys.exit(f"{path}: no {begin} … {end} block to update")
head, rest = text.split(begin, 1)
open(path, "w").write(head + begin + "\n" + table + "\n" + end + rest.split(end, 1)[1])
print(f"updated {path}")
PY
fi
