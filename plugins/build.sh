#!/usr/bin/env bash
# Builds the mailgate plugins from source into WebAssembly components: plugins/dist/<name>.wasm.
#
# Usage: plugins/build.sh [NAME...]     (no NAME: every plugin crate under plugins/)
#
# Guests are built for wasm32-unknown-unknown with, in this order of preference:
#   1. the normal toolchain, when `rustup target list --installed` shows that target;
#   2. Debian's rustc-web + rust-web-src + lld-16, building std with -Zbuild-std
#      (see shared/PLUGIN-TOOLCHAIN.md). This script never installs anything: when those
#      packages are missing it names them and stops.
# Then tools/componentize (built with the normal `cargo`) wraps each core module into a
# validated component. Set JOBS=N to pass -jN to cargo.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
target=wasm32-unknown-unknown
dist="$here/dist"
jobs=(${JOBS:+-j "$JOBS"})

die() { echo "build.sh: $*" >&2; exit 1; }
step() { echo "build.sh: $* (${SECONDS}s)"; }

# Plugin crates: every cdylib directly under plugins/ (the SDK is a plain library).
plugins=("$@")
if [ ${#plugins[@]} -eq 0 ]; then
    for manifest in "$here"/*/Cargo.toml; do
        grep -q 'crate-type = \["cdylib"\]' "$manifest" && plugins+=("$(basename "$(dirname "$manifest")")")
    done
fi
[ ${#plugins[@]} -gt 0 ] || die "no plugin crates found under $here"
packages=()
for name in "${plugins[@]}"; do
    [ -f "$here/$name/Cargo.toml" ] || die "no plugin crate $here/$name"
    packages+=(-p "$name")
done

if rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    step "guests: rustup toolchain with an installed $target target"
    guest_cargo=(cargo build)
    build_std=()
else
    missing=()
    [ -x /usr/bin/rustc ] || missing+=(rustc-web)
    [ -x /usr/bin/cargo ] || missing+=(cargo-web)
    [ -f /usr/lib/rustlib/src/rust/library/Cargo.lock ] || missing+=(rust-web-src)
    command -v wasm-ld-16 >/dev/null || missing+=(lld-16)
    if [ ${#missing[@]} -gt 0 ]; then
        die "no $target target in rustup and Debian packages missing: ${missing[*]}
  install: apt-get install -y --no-install-recommends rustc-web cargo-web rust-web-src lld-16"
    fi
    versions=$(dpkg-query -W -f='${Version}\n' rustc-web rust-web-src 2>/dev/null | sort -u | wc -l)
    [ "$versions" = 1 ] || die "rustc-web and rust-web-src versions differ; upgrade both"
    step "guests: Debian $(/usr/bin/rustc --version) with -Zbuild-std"
    # rustup's ~/.cargo/bin usually comes first in PATH, hence the full paths.
    guest_cargo=(env RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
        CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld-16 /usr/bin/cargo build)
    build_std=(-Zbuild-std=std,panic_abort)
fi

# A plugin crate added since the lock file was written is not in it yet: bring the lock up
# to date first (offline when the crates are cached), so a new plugin builds the first time;
# the build itself stays --locked. Commit the updated Cargo.lock with the new plugin.
if ! (cd "$here" && cargo metadata --locked --offline --format-version 1 >/dev/null 2>&1); then
    step "Cargo.lock lacks new plugin crates: updating it (commit it with them)"
    (cd "$here" && { cargo metadata --offline --format-version 1 >/dev/null 2>&1 ||
        cargo metadata --format-version 1 >/dev/null; }) || die "cannot update $here/Cargo.lock"
fi

(cd "$here" && nice -n 10 "${guest_cargo[@]}" --release --locked --target "$target" \
    "${build_std[@]}" "${jobs[@]}" "${packages[@]}")

step "building tools/componentize"
nice -n 10 cargo build --release --locked "${jobs[@]}" \
    --manifest-path "$root/tools/componentize/Cargo.toml"
componentize="$root/tools/componentize/target/release/componentize"

step "making components"
mkdir -p "$dist"
for name in "${plugins[@]}"; do
    "$componentize" "$here/target/$target/release/${name//-/_}.wasm" "$dist/$name.wasm"
done
step "done: ${#plugins[@]} components in $dist"
