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
source scripts/need-test-tools.sh
source scripts/need-browser.sh
source scripts/need-python-packs.sh

cargo test --workspace --locked "$@"
