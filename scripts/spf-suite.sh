#!/usr/bin/env bash
# Fetches the RFC 7208 test suite (openspf's rfc7208-tests.yml, release 2014.04, BSD licence:
# tests/data/rfc7208-tests.LICENSE) from pyspf's source distribution on PyPI, which carries it,
# into tests/data/ (not committed). tests/tests/spf_suite.rs runs it through the gateway.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=$root/tests/data
sum=901f561a6e2b1c1590a40a61b1ac7601226fd7045a7aae591a4d25421358d6f9
[ -f "$dest/rfc7208-tests.yml" ] && exit 0
mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: pyspf==2.0.14 -d "$tmp" >&2
tar -xzf "$tmp"/pyspf-2.0.14.tar.gz -C "$tmp" pyspf-2.0.14/test/rfc7208-tests.yml pyspf-2.0.14/test/rfc7208-tests.LICENSE
echo "$sum  $tmp/pyspf-2.0.14/test/rfc7208-tests.yml" | sha256sum -c --quiet
cp "$tmp"/pyspf-2.0.14/test/rfc7208-tests.{yml,LICENSE} "$dest/"
echo "spf-suite.sh: rfc7208-tests.yml in tests/data/"
