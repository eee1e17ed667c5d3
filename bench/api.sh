#!/usr/bin/env bash
# The sending API against SMTP on the same gateway, relaying to the same sink, in one run:
# delivered msg/s and the gateway's CPU µs per message, 1 KiB messages over keep-alive
# connections (JSON over HTTP/1.1; pipelined SMTP sessions), RUNS runs of each, alternating;
# prints a markdown table of medians. Both ways in pass the same pipeline, cleanup and spool,
# and write the same events (the API turns the event log on for the whole gateway). SMTP runs
# twice per round: mailgate-bench's plain message, and the same MIME message the API builds;
# the API twice too: JSON it builds the message from ("api"), and that MIME message sent raw
# as message/rfc822 ("api-raw": the way in alone, without building a message). And SMTP with
# that MIME message once more, a new connection for every message ("smtp-newconn"): how most
# application mail libraries submit (a connection, EHLO, one transaction, QUIT). And the JSON
# API once more with BATCH messages (default 10) in each request to /api/v1/messages/batch
# ("api-batch": how an application sends a burst of notifications).
#
#   bench/api.sh                      # 3 runs of 20,000 messages each way, 50 connections
#   RUNS=1 COUNT=5000 bench/api.sh
#   INSTRUCTIONS=1 bench/api.sh       # the gateway under callgrind: user-space instructions per
#                                     # message each way (COUNT=2000), the same from run to run
#                                     # on a noisy machine (kernel work is not counted)
#   INSTRUCTIONS=1 KEEP=/tmp/cg bench/api.sh   # … and keep the callgrind dumps there
#   PERFSTAT=1 bench/api.sh           # also the gateway's system calls and context switches
#                                     # per message each way (perf's software counters)
#   PROFILE=dir bench/api.sh          # and a perf profile of the gateway under each load
#                                     # (cpu-clock, 997 Hz): dir/perf.<label>-<run>.data
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
RUNS=${RUNS:-3}
INSTRUCTIONS=${INSTRUCTIONS:-}
PERFSTAT=${PERFSTAT:-}
if [ -n "$INSTRUCTIONS" ]; then COUNT=${COUNT:-2000}; else COUNT=${COUNT:-20000}; fi
SESSIONS=${SESSIONS:-50}
BATCH=${BATCH:-10}
SINK=25260 SMTP=25261 API=25262
work=$(mktemp -d /tmp/mailgate-api-bench.XXXXXX)
mg_pid=""
cleanup() {
    [ -n "$mg_pid" ] && kill "$mg_pid" 2>/dev/null && wait "$mg_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
wait_port() {
    for _ in $(seq 1200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done
    cat "$work/mailgate.log" >&2; echo "nothing listens on port $1" >&2; exit 1
}

# MG=/path/to/mailgate compares another build (the bench tool is built here either way).
echo "building (release)…" >&2
cargo build --release --locked -p mailgate -p mailgate-bench >&2
BENCH=$root/target/release/mailgate-bench
MG=${MG:-$root/target/release/mailgate}
cat > "$work/mailgate.toml" <<TOML
[server]
hostname = "mailgate.bench"
allow_root = true
[[listener]]
name = "mx"
address = "127.0.0.1:$SMTP"
[[api]]
name = "api"
address = "127.0.0.1:$API"
[limits]
max_sessions = 2000
max_sessions_per_ip = 2000
max_sessions_per_net = 2000
[spool]
path = "$work/spool"
[relay]
accept_domains = ["bench.test"]
[routes]
"*" = { type = "smarthost", host = "127.0.0.1", port = $SINK, tls = "none" }
[log]
level = "warn"
TOML
if [ -n "$INSTRUCTIONS" ]; then
    # Every thread's instructions, dumped per phase (callgrind_control -z / -d below).
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" --dump-instr=no \
        "$MG" serve --config "$work/mailgate.toml" 2>"$work/mailgate.log" &
else
    "$MG" serve --config "$work/mailgate.toml" 2>"$work/mailgate.log" &
fi
mg_pid=$!
wait_port "$SMTP"
wait_port "$API"
KEY=$("$MG" api-key create --name bench --config "$work/mailgate.toml" 2>/dev/null)

# The message the API builds from mailgate-bench's JSON (From, To, Subject, Date, Message-ID,
# MIME-Version, a text/plain body of the same lines), written by Python's email package: SMTP
# ("smtp-mime") then carries the same content as the API; "smtp" is mailgate-bench's own plain
# message without MIME fields (the figure earlier tables give).
python3 - "$work/mime.eml" <<'PY'
import sys
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from email.policy import SMTP
line = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmn\n"
text = (line * (1024 // 77 + 1))[: 1024 - 200]
m = EmailMessage(policy=SMTP)
m["From"] = "bench@bench.test"
m["To"] = "s0r0@bench.test"
m["Subject"] = "mailgate-bench"
m["Date"] = formatdate()
m["Message-ID"] = make_msgid(domain="mailgate.bench")
m.set_content(text)
open(sys.argv[1], "wb").write(m.as_bytes())
PY

if [ -n "$INSTRUCTIONS" ]; then
    smtp() { "$BENCH" run --target "127.0.0.1:$SMTP" --sink "127.0.0.1:$SINK" --sessions "$SESSIONS" --drain 600 "$@"; }
    api() { "$BENCH" run --api "http://127.0.0.1:$API/api/v1/messages" --key "$KEY" --sink "127.0.0.1:$SINK" \
        --sessions "$SESSIONS" --drain 600 "$@"; }
    # Warm-up (first connections, pools, the spool's first files), not counted.
    smtp --count 500 >/dev/null; smtp --count 500 --message "$work/mime.eml" >/dev/null; api --count 500 >/dev/null
    echo "| user-space instructions per message (callgrind, $COUNT messages each) | run 1 | run 2 |"
    echo "|---|---|---|"
    declare -A ir
    for run in 1 2; do
        for label in smtp smtp-mime smtp-newconn api api-raw api-batch; do
            callgrind_control -z "$mg_pid" >/dev/null
            case $label in
                smtp) smtp --count "$COUNT" >/dev/null ;;
                smtp-mime) smtp --count "$COUNT" --message "$work/mime.eml" >/dev/null ;;
                smtp-newconn) smtp --count "$COUNT" --message "$work/mime.eml" --new-conn >/dev/null ;;
                api) api --count "$COUNT" >/dev/null ;;
                api-raw) api --count "$COUNT" --message "$work/mime.eml" >/dev/null ;;
                api-batch) api --count "$COUNT" --batch "$BATCH" >/dev/null ;;
            esac
            callgrind_control -d "$label-$run" "$mg_pid" >/dev/null
            # The dump is written by the gateway's process: wait for it (bounded).
            dump=""
            for _ in $(seq 100); do
                dump=$(grep -l "^desc: Trigger: dump $label-$run\$" "$work"/cg.out* 2>/dev/null || true)
                [ -n "$dump" ] && break
                sleep 0.1
            done
            [ -n "$dump" ] || { echo "no callgrind dump for $label-$run" >&2; exit 1; }
            ir[$label-$run]=$(( $(awk '/^summary:/ {print $2}' "$dump") / COUNT ))
        done
    done
    for label in smtp smtp-mime smtp-newconn api api-raw api-batch; do echo "| $label | ${ir[$label-1]} | ${ir[$label-2]} |"; done
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work"/cg.out* "$KEEP"/; fi
    exit 0
fi

# One measured load: the bench's JSON line, and with PERFSTAT=1 the gateway's system calls and
# context switches over it (perf's software counters), in a file per label and run.
measure() { # label bench-args…
    local label=$1 perf_pid=""
    shift
    if [ -n "$PERFSTAT" ]; then
        perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$mg_pid" -o "$work/perf-$label-$run.txt" &
        perf_pid=$!
        # perf attaches in the background: wait until it has opened its counters (bounded).
        for _ in $(seq 50); do [ -s "$work/perf-$label-$run.txt" ] && break; sleep 0.1; done
    fi
    local rec_pid=""
    if [ -n "${PROFILE:-}" ]; then
        mkdir -p "$PROFILE"
        perf record -q -g -F 997 -p "$mg_pid" -o "$PROFILE/perf.$label-$run.data" 2>/dev/null &
        rec_pid=$!
    fi
    "$BENCH" run --sink "127.0.0.1:$SINK" --sessions "$SESSIONS" --count "$COUNT" --pid "$mg_pid" --label "$label" \
        "$@" >> "$work/results.jsonl"
    if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
    if [ -n "$rec_pid" ]; then kill -INT "$rec_pid"; wait "$rec_pid" || true; fi
}
for run in $(seq "$RUNS"); do
    measure smtp --target "127.0.0.1:$SMTP"
    measure smtp-mime --target "127.0.0.1:$SMTP" --message "$work/mime.eml"
    measure smtp-newconn --target "127.0.0.1:$SMTP" --message "$work/mime.eml" --new-conn
    measure api --api "http://127.0.0.1:$API/api/v1/messages" --key "$KEY"
    measure api-raw --api "http://127.0.0.1:$API/api/v1/messages" --key "$KEY" --message "$work/mime.eml"
    measure api-batch --api "http://127.0.0.1:$API/api/v1/messages" --key "$KEY" --batch "$BATCH"
    echo "run $run done" >&2
done

BATCH=$BATCH python3 - "$work/results.jsonl" "$work" <<'PY'
import json, os, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
# PERFSTAT=1: the perf counters of each row (rows are in label order within a run).
runs = {}
for r in rows:
    runs[r["label"]] = runs.get(r["label"], 0) + 1
    f = os.path.join(sys.argv[2], f"perf-{r['label']}-{runs[r['label']]}.txt")
    if os.path.exists(f) and r["delivered"]:
        for line in open(f):
            parts = line.strip().split(",")
            if len(parts) > 2 and parts[0].replace(".", "").isdigit():
                key = "syscalls_per_msg" if "sys_enter" in parts[2] else "switches_per_msg"
                r[key] = float(parts[0]) / r["delivered"]
med = lambda label, k: statistics.median(r[k] for r in rows if r["label"] == label)
print("| 1 KiB, keep-alive | msg/s | CPU µs/msg | user | system | p50 µs | p99 µs | load generator + sink CPU µs/msg |")
print("|---|---|---|---|---|---|---|---|")
labels = ("smtp", "smtp-mime", "smtp-newconn", "api", "api-raw", "api-batch")
for label in labels:
    print(f"| {label} | {med(label, 'msg_per_s'):,.0f} | {med(label, 'cpu_us_per_msg'):.0f} | {med(label, 'user_us_per_msg'):.0f} | {med(label, 'sys_us_per_msg'):.0f} | {med(label, 'p50_us'):,.0f} | {med(label, 'p99_us'):,.0f} | {med(label, 'bench_cpu_us_per_msg'):.0f} |")
api = med('api', 'cpu_us_per_msg')
print(f"\napi/smtp-mime CPU per message (the same content): {api / med('smtp-mime', 'cpu_us_per_msg'):.2f}")
print(f"api/smtp CPU per message (smtp: a plain message): {api / med('smtp', 'cpu_us_per_msg'):.2f}")
print(f"api-raw/smtp-mime CPU per message (the same message, raw): {med('api-raw', 'cpu_us_per_msg') / med('smtp-mime', 'cpu_us_per_msg'):.2f}")
print(f"api-batch/smtp-mime CPU per message (the API, {os.environ.get('BATCH', '10')} messages a request): {med('api-batch', 'cpu_us_per_msg') / med('smtp-mime', 'cpu_us_per_msg'):.2f}")
print(f"api/smtp-newconn CPU per message (SMTP a connection per message): {api / med('smtp-newconn', 'cpu_us_per_msg'):.2f}")
for label in labels:
    print(f"{label} runs: " + ", ".join(f"{r['cpu_us_per_msg']:.0f}" for r in rows if r["label"] == label))
if any("syscalls_per_msg" in r for r in rows):
    print("\n| label | system calls/msg | context switches/msg |\n|---|---|---|")
    for label in labels:
        print(f"| {label} | {med(label, 'syscalls_per_msg'):.2f} | {med(label, 'switches_per_msg'):.2f} |")
PY
