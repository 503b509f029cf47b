#!/usr/bin/env bash
# Builds `tasuki`, `tasuki-hub` and `tasuki-fleet-bench` in release mode and
# runs the fleet-mode benchmarks against real hub and agent processes. The
# Markdown report goes to stdout; build output and progress go to stderr.
#
#   bench/fleet.sh                          # all: pickup cancel logs idle fleet
#   bench/fleet.sh pickup --sessions 100    # one benchmark, smaller
#   FLEET_IDLE_SECONDS=30 bench/fleet.sh idle
#   bench/fleet.sh soak                     # 10,000 sessions, two agents
#   bench/fleet.sh soak --soak-sessions 500 # a short soak
#   bench/fleet.sh warm                     # browser.warm side by side (needs Chromium)
#
# Several hubs on PostgreSQL (issue 15): each takes the admin URL of a
# PostgreSQL server in TASUKI_BENCH_POSTGRES (or --postgres URL), creates a
# database per measurement there and drops it at the end.
#   export TASUKI_BENCH_POSTGRES=postgres://user@127.0.0.1:5432/postgres
#   bench/fleet.sh pickup-hubs              # pickup: SQLite, PG one hub, PG three hubs
#   bench/fleet.sh throughput               # sessions/s: 6 agents, 600 sessions, 3 rounds
#   bench/fleet.sh fleet-hubs               # 5,000 simulated robots across 3 hubs
#   bench/fleet.sh hubs                     # the three of them
#   bench/fleet.sh hubs --sessions 200 --swarm-robots 2000 --hubs 2
#
# Arguments are passed to `tasuki-fleet-bench` (see its --help).
# CARGO_TARGET_DIR is honoured; TASUKI_BIN and TASUKI_HUB_BIN override the
# binaries under test.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

cargo build --release -p tasuki-agent -p tasuki-hub -p tasuki-bench >&2

target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$target_dir" in
  /*) ;;
  *) target_dir="$root/$target_dir" ;;
esac

# A thousand simulated robots need a few thousand descriptors, in the bench
# and in the hub (which inherits the limit).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec "$target_dir/release/tasuki-fleet-bench" "$@"
