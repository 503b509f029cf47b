#!/usr/bin/env bash
# Runs every test: unit tests, the malformed-input corpus, and the
# end-to-end tests that start real processes and loopback servers.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo is missing. Install Rust with rustup:" >&2
    echo "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh" >&2
    exit 1
fi
missing=()
for tool in cc sh bash sleep openssl base64 faketime; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "test.sh: missing tools: ${missing[*]}" >&2
    echo "  Debian/Ubuntu: sudo apt-get install -y build-essential bash coreutils openssl faketime" >&2
    exit 1
fi

source scripts/need-browser.sh

cargo test --workspace --locked "$@"
