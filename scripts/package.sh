#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (installed into ~/.cargo/bin when missing):
#   scripts/package.sh          a release build of the gateway and the stock plugins from source
#                               → target/debian/mailgate_<version>_<arch>.deb
#   scripts/package.sh --tested the binary the tests run (target/debug/mailgate-under-test, the
#                               same program) packaged as it is — what CI installs and runs,
#                               because a release build of wasmtime alone outlasts CI's budget
#                               → target/package-tested/debian/mailgate_<version>_<arch>.deb
# The package: /usr/bin/mailgate, the plugins in /usr/lib/mailgate/plugins, the configuration
# /etc/mailgate/mailgate.toml (kept on upgrade), the systemd unit, the `mailgate` user and
# /var/spool/mailgate, /var/lib/mailgate owned by it (crates/mailgate/Cargo.toml, dist/).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if ! command -v cargo-deb >/dev/null; then
    echo "package.sh: installing cargo-deb"
    cargo install --quiet --locked cargo-deb --version 3.8.0
fi
plugins/build.sh >/dev/null
target=$(cargo metadata --format-version 1 --no-deps --locked | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
case "${1:-}" in
    "")
        cargo deb --locked -p mailgate
        ;;
    --tested)
        bin="$target/debug/mailgate-under-test"
        [ -x "$bin" ] || { echo "package.sh: $bin is missing (cargo test --no-run builds it)" >&2; exit 1; }
        # cargo-deb takes an unbuilt package's binary from <target>/<profile>/; give it a
        # target directory of its own so nothing of cargo's is touched.
        staged="$target/package-tested"
        mkdir -p "$staged/debug"
        cp "$bin" "$staged/debug/mailgate"
        # (cargo-deb warns that it is meant for release profiles: it is, but for this.)
        CARGO_TARGET_DIR="$staged" cargo deb --locked -p mailgate --no-build --profile dev --fast --quiet
        ls "$staged"/debian/mailgate_*.deb >/dev/null
        ;;
    *)
        echo "usage: scripts/package.sh [--tested]" >&2
        exit 64
        ;;
esac
