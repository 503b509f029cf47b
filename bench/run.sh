#!/usr/bin/env bash
# Builds `tasuki` and `tasuki-bench` in release mode and runs every benchmark
# of issues 2 and 3. The Markdown report (machine, then results) goes to
# stdout; build output and progress go to stderr.
#
#   bench/run.sh                    # all benchmarks, default run counts
#   bench/run.sh --runs 31          # more runs each
#   bench/run.sh shell --runs 5     # one benchmark (executor, shell, packs, browser, all)
#   bench/run.sh --no-browser       # all but the browser benchmark
#
# The browser benchmark compares with Robot Framework + SeleniumLibrary:
# this script installs them, pinned in bench/robot/requirements.txt, into a
# virtualenv at $BENCH_VENV (target/bench-venv by default) with python3 and
# pip, once, and again whenever the requirements change. Pass --no-robot to
# leave Robot Framework out (then no Python is needed).
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

# Robot Framework for the browser benchmark, unless it is not needed.
want_robot=1
subcommand=all
for arg in "$@"; do
  case "$arg" in
    --no-robot | --no-browser) want_robot=0 ;;
    executor | shell | packs | spawn-loop | raw-browser) subcommand="$arg" ;;
  esac
done
case "$subcommand" in
  executor | shell | packs | spawn-loop | raw-browser) want_robot=0 ;;
esac
robot_version="not used"
if [ "$want_robot" = 1 ] && [ -z "${ROBOT_BIN:-}" ]; then
  venv="${BENCH_VENV:-$target_dir/bench-venv}"
  requirements="$root/bench/robot/requirements.txt"
  stamp="$venv/.requirements.sha256"
  want_stamp="$(sha256sum "$requirements" | cut -d' ' -f1)"
  if [ ! -x "$venv/bin/robot" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want_stamp" ]; then
    echo "run.sh: installing Robot Framework into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
    echo "$want_stamp" > "$stamp"
  fi
  export ROBOT_BIN="$venv/bin/robot"
fi
if [ "$want_robot" = 1 ]; then
  robot_version="$("$ROBOT_BIN" --version 2>/dev/null | head -1 || true), SeleniumLibrary $("$(dirname "$ROBOT_BIN")/python" -c 'import SeleniumLibrary; print(SeleniumLibrary.__version__)' 2>/dev/null || echo '?'), Selenium $("$(dirname "$ROBOT_BIN")/python" -c 'import selenium; print(selenium.__version__)' 2>/dev/null || echo '?')"
fi
chromium_version="$( (chromium --version || chromium-browser --version || google-chrome --version) 2>/dev/null | head -1 || true)"
chromedriver_version="$(chromedriver --version 2>/dev/null | head -1 | cut -d' ' -f1-2 || true)"

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
| Chromium | ${chromium_version:-not found} |
| chromedriver | ${chromedriver_version:-not found} |
| Robot Framework | ${robot_version} |
| Load average before the run | $(cut -d' ' -f1-3 /proc/loadavg) |

## Results

EOF

"$target_dir/release/tasuki-bench" "$@"
