#!/usr/bin/env bash
# The test command: installs what is missing, builds the plugins from source, runs every test
# of the workspace (unit + end-to-end with real clients, sink and DNS server), and builds the
# fuzz target. The same command runs in CI (.ci/run).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
t0=$SECONDS
step() { echo "== $* (${SECONDS}s)"; }

step "Debian packages"
scripts/deps.sh

step "RFC 7208 test suite (from pyspf's sources)"
scripts/spf-suite.sh

step "plugins (wasm components)"
plugins/build.sh

step "workspace build"
cargo test --workspace --locked --no-run

step "Debian package of the binary under test (tests/tests/package.rs installs it)"
scripts/package.sh --tested

step "workspace tests"
cargo test --workspace --locked

step "fuzz targets build"
cargo build --locked --manifest-path crates/smtp/fuzz/Cargo.toml
cargo build --locked --manifest-path crates/message/fuzz/Cargo.toml

step "all green in $((SECONDS - t0))s"
