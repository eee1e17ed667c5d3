#!/usr/bin/env bash
# Installs the Debian packages the tests and the plugin build need (idempotent; root only).
#   swaks, python3          real SMTP clients in the end-to-end tests
#   python3-dkim (+nacl, dnspython, authres)   dkimpy: the independent DKIM/ARC implementation the auth tests cross-check against
#   libnet-ssleay-perl libio-socket-ssl-perl openssl   swaks -tls and openssl s_client for TLS tests
#   dnsmasq-base            the real DNS server on loopback (MX/A records for tests)
#   rustc-web cargo-web rust-web-src lld-16   the wasm32 guest toolchain (shared/PLUGIN-TOOLCHAIN.md)
#   postfix                 smtp-sink/smtp-source and the peer for benchmarks
#   iproute2                network namespaces with the RFC 7208 suite's client addresses
#   curl                    a real HTTP client for the sending API tests
#   dovecot-core dovecot-lmtpd   Dovecot's LMTP server: the local delivery agent of the LMTP route tests
#   systemd                 systemd-analyze: verifies the unit file and rates its hardening
#   adduser                 the Debian package's postinst creates the mailgate user with it
#   knot knot-dnsutils      Knot DNS signs and serves the DNSSEC zone of the DANE tests (kdig: AXFR)
set -euo pipefail
pkgs=(swaks libnet-ssleay-perl libio-socket-ssl-perl openssl dnsmasq-base rustc-web cargo-web rust-web-src lld-16 postfix python3 python3-dkim python3-nacl python3-dnspython python3-authres iproute2 curl dovecot-core dovecot-lmtpd systemd adduser knot knot-dnsutils)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "deps.sh: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
fi
echo "deps.sh: installing ${missing[*]}"
# postfix asks a debconf question on install; answer it, and it does not start by itself here.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
