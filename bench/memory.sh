#!/usr/bin/env bash
# Memory under large concurrent messages: the gateway's resident size (before, peak while the
# load runs, and 2 s after it) for 100 × 9 MB and 1,000 × 1 MB messages sent at once through
# the gateway to the bench sink, with the default memory budget for content in flight
# (limits.content_memory = 512 MiB). Everything on loopback; every run bounded in count and
# time; nothing is left running.
#
#   bench/memory.sh            # both loads
#   LOADS="100:9437184" bench/memory.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
LOADS=${LOADS:-"100:9437184 1000:1048576"}
SINK=25260 MG_PORT=25261
work=$(mktemp -d /tmp/mailgate-memory.XXXXXX)
mg_pid=""
cleanup() {
    [ -n "$mg_pid" ] && kill "$mg_pid" 2>/dev/null && wait "$mg_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

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
address = "127.0.0.1:$MG_PORT"
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

for load in $LOADS; do
    sessions=${load%%:*} size=${load##*:}
    rm -rf "$work/spool"
    "$MG" serve --config "$work/mailgate.toml" 2>"$work/mailgate.log" &
    mg_pid=$!
    for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$MG_PORT) 2>/dev/null && break; sleep 0.1; done
    "$BENCH" run --target "127.0.0.1:$MG_PORT" --sink "127.0.0.1:$SINK" --sessions "$sessions" \
        --count "$sessions" --size "$size" --pid "$mg_pid" --duration 180 --drain 180 \
        --label "${sessions}x${size}" || true
    kill "$mg_pid"; wait "$mg_pid" 2>/dev/null || true; mg_pid=""
done
