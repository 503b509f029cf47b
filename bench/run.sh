#!/usr/bin/env bash
# Builds `tasuki` and `tasuki-bench` in release mode and runs every benchmark
# of issue 2. The Markdown report (machine, then results) goes to stdout;
# build output and progress go to stderr.
#
#   bench/run.sh                    # all benchmarks, default run counts
#   bench/run.sh --runs 31          # more runs each
#   bench/run.sh shell --runs 5     # one benchmark (executor, shell, all)
#
# Arguments are passed to `tasuki-bench` (see `tasuki-bench --help`).
# CARGO_TARGET_DIR is honoured; TASUKI_BIN overrides the `tasuki` binary.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

cargo build --release -p tasuki-agent -p tasuki-bench >&2

target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$target_dir" in
  /*) ;;
  *) target_dir="$root/$target_dir" ;;
esac
export TASUKI_BIN="${TASUKI_BIN:-$target_dir/release/tasuki}"

cpu_model="$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty=""
if [ -n "$(git -C "$root" status --porcelain -- actions agent 2>/dev/null)" ]; then
  dirty=" (actions/ or agent/ has uncommitted changes)"
fi

cat <<EOF
## Machine

| | |
|---|---|
| Date | $(date -u '+%Y-%m-%d %H:%M:%S UTC') |
| CPUs (nproc) | $(nproc) |
| CPU model | ${cpu_model:-unknown} |
| Kernel | $(uname -srm) |
| rustc | $(rustc --version) |
| Commit | ${commit}${dirty} |
| Load average before the run | $(cut -d' ' -f1-3 /proc/loadavg) |

## Results

EOF

"$target_dir/release/tasuki-bench" "$@"
