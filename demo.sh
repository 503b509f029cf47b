#!/usr/bin/env bash
# The quickstart: builds Tasuki and runs the built-in example workflow
# (browser, HTTP, shell and control steps) against the built-in demo shop, which is
# served on a loopback port for the length of the run.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v cargo >/dev/null 2>&1; then
    echo "demo.sh: cargo is missing. Install Rust with rustup:" >&2
    echo "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh" >&2
    exit 1
fi
if ! command -v cc >/dev/null 2>&1; then
    echo "demo.sh: a C compiler is missing (some dependencies build C code)." >&2
    echo "  Debian/Ubuntu: sudo apt-get install -y build-essential" >&2
    exit 1
fi

source scripts/need-browser.sh

echo "building tasuki (release)…" >&2
cargo build --release --locked --quiet -p tasuki-agent
exec target/release/tasuki demo "$@"
