#!/usr/bin/env bash
# What a hostile message costs the gateway: CPU per message for mail built to make the
# authentication checks expensive — long ARC chains (2048-, 4096- and 8192-bit keys), a DKIM
# signature whose h= lists thousands of field names, ten DKIM signatures by 8192-bit keys —
# against an ordinary one-set chain and ten signatures by 2048-bit keys, each
# sent K times over one SMTP session. The keys are served by dnsmasq on loopback; DKIM/ARC are
# computed for every message (`[auth] always = ["dkim"]`). CPU is the gateway's utime + stime
# from /proc (10 ms ticks: read small figures as "at most a tick").
#
#   bench/hostile.sh                  # K=20 messages of each kind
#   MG=/path/to/other/mailgate bench/hostile.sh    # another build, same messages
#   MG_BUILT=1 bench/hostile.sh       # without building first
#
# Needs dnsmasq, openssl and python3-dkim (scripts/deps.sh). The 8192-bit key takes openssl
# ~40 s to make; it is kept in bench/.hostile/ for the next run.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
K=${K:-20}
MG=${MG:-$root/target/release/mailgate}
[ -n "${MG_BUILT:-}" ] || cargo build --release --locked -p mailgate -p mailgate-bench >&2
keys=$root/bench/.hostile
mkdir -p "$keys"
for b in 2048 4096 8192; do
    [ -f "$keys/k$b.pem" ] || openssl genrsa -traditional -out "$keys/k$b.pem" "$b" 2>/dev/null
done
work=$(mktemp -d /tmp/mailgate-hostile.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
DNS=25290 SINK=25291 SMTP=25292
record() { # selector key-bits: a dnsmasq --txt-record for <selector>._domainkey.fwd.test
    local p
    p=$(openssl rsa -pubout -outform DER -in "$keys/k$2.pem" 2>/dev/null | base64 -w0)
    python3 -c "import sys; v='v=DKIM1; k=rsa; p='+sys.argv[2]; print('--txt-record=' + sys.argv[1] + '._domainkey.fwd.test,' + ','.join(v[i:i+255] for i in range(0, len(v), 255)))" "$1" "$p"
}
/usr/sbin/dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces \
    --listen-address=127.0.0.1 --pid-file= --local=/test/ --port=$DNS --user=root --local-ttl=300 \
    "$(record k2048 2048)" "$(record k4096 4096)" "$(record k8192 8192)" >/dev/null 2>&1 &
pids+=($!)
"$root/target/release/mailgate-bench" sink --listen 127.0.0.1:$SINK >/dev/null 2>&1 &
pids+=($!)
cat > "$work/mailgate.toml" <<TOML
[server]
hostname = "mx.gateway.test"
allow_root = true
[[listener]]
name = "mx"
address = "127.0.0.1:$SMTP"
[spool]
path = "$work/spool"
[relay]
accept_domains = ["remote.test"]
[routes]
"*" = { type = "smarthost", host = "127.0.0.1", port = $SINK, tls = "none" }
[dns]
nameservers = ["127.0.0.1:$DNS"]
[auth]
always = ["dkim"]
[log]
level = "warn"
TOML
"$MG" serve --config "$work/mailgate.toml" 2>"$work/mailgate.log" &
gw=$!
pids+=($gw)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$SMTP) 2>/dev/null && break; sleep 0.1; done

# The messages: an ARC chain of N sets sealed by dkimpy (every hop with one key), or a DKIM
# signature listing N field names the message does not have (b= is not a signature: the
# names are hashed before the signature is checked).
/usr/bin/python3 - "$work" "$keys" <<'PY'
import base64, hashlib, itertools, string, sys, dkim
work, keys = sys.argv[1], sys.argv[2]
head = (b"To: <u@remote.test>\r\nSubject: hostile\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
        b"Message-ID: <hostile@sender>\r\n")
body = b"Hello,\r\nthis is a test.\r\n"
def chain(n, bits):
    key = open(f"{keys}/k{bits}.pem", "rb").read()
    msg = b"From: Sender <alice@fwd.test>\r\n" + head + b"\r\n" + body
    for i in range(1, n + 1):
        srv = b"hop%d.test" % i
        res = b"arc=pass" if i > 1 else b"spf=pass smtp.mailfrom=fwd.test"
        msg = b"Authentication-Results: " + srv + b"; " + res + b"\r\n" + msg
        h = dkim.arc_sign(msg, b"k%d" % bits, b"fwd.test", key, srv, include_headers=[b"From", b"To", b"Subject", b"Date"])
        msg = b"".join(h) + msg
    return msg
def names(n):
    bh = base64.b64encode(hashlib.sha256(body).digest())
    it = ("".join(t).encode() for t in itertools.product(string.ascii_lowercase, repeat=4))
    h = [b"from"] + [next(it) for _ in range(n)]
    folded = b":\r\n\t".join(b":".join(h[i:i + 150]) for i in range(0, len(h), 150))
    sig = (b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=fwd.test; s=k2048;\r\n\tbh=" + bh +
           b";\r\n\th=" + folded + b";\r\n\tb=AAAA\r\n")
    return sig + b"From: Sender <alice@fwd.test>\r\n" + head + b"\r\n" + body
def signed(n, bits):
    key = open(f"{keys}/k{bits}.pem", "rb").read()
    msg = b"From: Sender <alice@fwd.test>\r\n" + head + b"\r\n" + body
    for _ in range(n):
        msg = dkim.sign(msg, b"k%d" % bits, b"fwd.test", key, include_headers=[b"From", b"To", b"Subject", b"Date"]) + msg
    return msg
for label, msg in [("arc-1-set-4096", chain(1, 4096)), ("dkim-10-sigs-2048", signed(10, 2048)),
                   ("dkim-10-sigs-8192", signed(10, 8192)), ("arc-50-sets-2048", chain(50, 2048)),
                   ("arc-50-sets-4096", chain(50, 4096)), ("arc-50-sets-8192", chain(50, 8192)),
                   ("dkim-h-10000-names", names(10000)), ("dkim-h-40000-names", names(40000))]:
    open(f"{work}/{label}.eml", "wb").write(msg)
PY

cpu() { awk '{print $14 + $15}' "/proc/$gw/stat"; }
send() { # file count
    /usr/bin/python3 - "$SMTP" "$1" "$2" <<'PY'
import smtplib, sys
m = open(sys.argv[2], "rb").read()
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=600)
for _ in range(int(sys.argv[3])):
    s.sendmail("alice@fwd.test", ["u@remote.test"], m)
s.quit()
PY
}
echo "| message | octets | gateway CPU µs/msg |"
echo "|---|---|---|"
for f in arc-1-set-4096 dkim-10-sigs-2048 dkim-10-sigs-8192 arc-50-sets-2048 arc-50-sets-4096 arc-50-sets-8192 dkim-h-10000-names dkim-h-40000-names; do
    send "$work/$f.eml" 1   # warm: keys fetched and cached
    n=$K
    case $f in dkim-h-40000-names) n=$(( K < 3 ? K : 3 )) ;; esac   # seconds each before the fix
    a=$(cpu)
    send "$work/$f.eml" "$n"
    b=$(cpu)
    echo "| $f | $(stat -c %s "$work/$f.eml") | $(( (b - a) * 10000 / n )) |"
done
