#!/usr/bin/env bash
# Makes a new plugin crate that builds, passes `mailgate plugin check` and answers at RCPT:
#
#   plugins/new.sh my-filter          # plugins/my-filter/{Cargo.toml,src/lib.rs,README.md}
#   plugins/build.sh my-filter        # plugins/dist/my-filter.wasm
#   mailgate plugin test plugins/dist/my-filter.wasm --rcpt someone@example.test
#
# The guide: docs/writing-plugins.md.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
name=${1:-}
[[ "$name" =~ ^[a-z][a-z0-9-]*$ ]] || { echo "usage: plugins/new.sh NAME (lower case, digits, '-')" >&2; exit 64; }
dir="$here/$name"
[ -e "$dir" ] && { echo "new.sh: $dir exists" >&2; exit 1; }
type=$(echo "$name" | sed -E 's/(^|-)([a-z0-9])/\U\2/g')
mkdir -p "$dir/src"
cat > "$dir/Cargo.toml" <<TOML
[package]
name = "$name"
description = "mailgate plugin: $name"
version.workspace = true
edition.workspace = true
rust-version.workspace = true
license.workspace = true
publish.workspace = true

[lib]
crate-type = ["cdylib"]

[dependencies]
mailgate-plugin-sdk.workspace = true
TOML
cat > "$dir/src/lib.rs" <<RUST
//! $name: refuses recipients of the domains listed in its config; everything else goes on.

use mailgate_plugin_sdk::prelude::*;

#[derive(Default)]
struct $type {
    /// Recipient domains to refuse (lower case), from \`domains = [...]\` in the config.
    refused: Vec<String>,
}

impl Filter for $type {
    /// Runs once per instance, before any hook: read and check the config here. An error
    /// makes \`mailgate config check\` and \`mailgate plugin test\` fail, naming it.
    fn init(&mut self) -> Result<(), String> {
        self.refused = config::get_list("domains").into_iter().map(|d| d.to_ascii_lowercase()).collect();
        Ok(())
    }

    fn on_rcpt(&mut self, _conn: &ConnectionInfo, _env: &Envelope, rcpt: &str) -> Verdict {
        let domain = rcpt.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
        if self.refused.contains(&domain) {
            log::info!("$name: refusing {rcpt}");
            return Verdict::reject(550, "5.7.1", format!("{domain} does not take mail here"));
        }
        Verdict::Next
    }

    /// No hook stores anything in `self` (only `init` does, from the config), so the gateway
    /// may lend an instance to any session for one call at a time: a few warm instances serve
    /// every session, and a new connection makes none. Set it to `false` (and see
    /// `KEEPS_NO_SESSION_STATE`) once a hook remembers something for a later one.
    const KEEPS_NO_STATE: bool = true;
}

export!($type);
RUST
cat > "$dir/README.md" <<MD
# $name

Refuses recipients of the listed domains at RCPT (\`550 5.7.1\`); every other verdict is \`next\`.

| key | type | default | what |
|---|---|---|---|
| \`domains\` | list of strings | \`[]\` | recipient domains to refuse |

\`\`\`toml
[[plugin]]
name = "$name"
path = "plugins/dist/$name.wasm"
stages = ["rcpt"]
[plugin.config]
domains = ["blocked.example"]
\`\`\`
MD
echo "new.sh: made $dir — next: plugins/build.sh $name"
