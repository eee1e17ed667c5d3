#!/usr/bin/env bash
# Runs the gateway on its embedded default (config/mailgate.toml): installs the plugin
# toolchain when missing, builds the stock plugins, then `mailgate serve`. Extra arguments go
# to `serve` (e.g. --config FILE).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/deps.sh
plugins/build.sh
exec cargo run --release --locked -p mailgate -- serve "$@"
