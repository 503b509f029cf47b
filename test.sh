#!/usr/bin/env bash
# Runs every test: unit tests, the malformed-input corpus, and the
# end-to-end tests that start real processes and loopback servers; then
# the hub's whole suite again with its database on PostgreSQL, on a
# throwaway server this script starts (and stops).
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
source scripts/need-postgres.sh
source scripts/throwaway-postgres.sh
# Tests of several hubs use it whatever the backend (tests/hub_support.rs).
export TASUKI_TEST_POSTGRES="$THROWAWAY_POSTGRES"

cargo test --workspace --locked "$@"

# The hub's tests, each hub on a fresh PostgreSQL database. (The agent
# binary the fleet tests start was built by the run above.)
echo "test.sh: the hub's tests again, on PostgreSQL" >&2
TASUKI_TEST_BACKEND=postgres cargo test -p tasuki-hub --locked "$@"
