#!/usr/bin/env bash
# The Celery peer benchmark: a Celery 5 worker (prefork, concurrency 1) on a
# Redis broker, all on loopback. See README.md.
#
#   bench/celery/run.sh            # Markdown report on stdout
#   bench/celery/run.sh --json     # JSON on stdout
#   CELERY_IDLE_SECONDS=10 bench/celery/run.sh   # shorter idle window (default 300)
#   CELERY_PICKUP_COUNT=500 CELERY_CANCEL_REPS=20   # the other defaults
#
# Runs setup.sh first (installs redis-server / the virtualenv if missing).
# Starts redis-server on a free 127.0.0.1 port and the worker, and stops both
# (and any process the benchmark left) on exit. Progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${CELERY_BENCH_VENV:-$root/target/bench-venv-celery}"
idle_seconds="${CELERY_IDLE_SECONDS:-300}"
pickup_count="${CELERY_PICKUP_COUNT:-500}"
cancel_reps="${CELERY_CANCEL_REPS:-20}"

json=()
for arg in "$@"; do
  case "$arg" in
    --json) json=(--json) ;;
    -h | --help) sed -n '2,12p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "run.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

say() { echo "run.sh: $*" >&2; }

"$here/setup.sh"
py="$venv/bin/python"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tasuki-bench-celery.XXXXXX")"
redis_pid=""
worker_pid=""

# Kills a process if it is still there; waits up to $2 tenths of a second
# after SIGTERM before SIGKILL.
stop_pid() {
  local pid="$1" tenths="$2" i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < tenths; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? pids pid name
  set +e
  if [ -n "$worker_pid" ]; then
    # The pool processes die with the main process (PDEATHSIG), but collect
    # them first to make sure.
    pids="$(ps -o pid= --ppid "$worker_pid" 2>/dev/null)"
    stop_pid "$worker_pid" 100
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null; done
  fi
  # Shells and sleeps of the cancel test still alive (if bench.py was
  # interrupted): their PIDs are in the work dir; check the name first.
  for f in "$tmp"/work/*.child "$tmp"/work/*.grandchild; do
    [ -f "$f" ] || continue
    pid="$(cat "$f" 2>/dev/null)"
    name="$(awk '/^Name:/ {print $2}' "/proc/$pid/status" 2>/dev/null)"
    case "$name" in sh | sleep) kill -KILL "$pid" 2>/dev/null ;; esac
  done
  [ -n "$redis_pid" ] && stop_pid "$redis_pid" 50
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$tmp/redis" "$tmp/work"

# A free loopback port (asked of the kernel; retried if redis cannot bind it).
for attempt in 1 2 3 4 5; do
  port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
    --protected-mode yes --dir "$tmp/redis" --daemonize no --loglevel warning \
    --logfile "$tmp/redis/redis.log" &
  redis_pid=$!
  for ((i = 0; i < 100; i++)); do
    if "$py" -c 'import redis, sys; redis.Redis(host="127.0.0.1", port=int(sys.argv[1]), socket_timeout=0.5).ping()' "$port" 2>/dev/null; then
      break 2
    fi
    kill -0 "$redis_pid" 2>/dev/null || break
    sleep 0.05
  done
  say "redis-server did not start on port $port (attempt $attempt)"
  stop_pid "$redis_pid" 20
  redis_pid=""
done
if [ -z "$redis_pid" ]; then
  cat "$tmp/redis/redis.log" >&2 || true
  exit 1
fi
export BENCH_REDIS_URL="redis://127.0.0.1:$port/0"
say "redis-server pid $redis_pid on 127.0.0.1:$port"

cd "$here"
export PYTHONDONTWRITEBYTECODE=1
"$venv/bin/celery" -A tasks worker -P prefork -c 1 --loglevel warning \
  --without-gossip --without-mingle --without-heartbeat \
  -n "bench@%h" --logfile "$tmp/worker.log" >"$tmp/worker.out" 2>&1 &
worker_pid=$!
say "celery worker pid $worker_pid"

# bench.py waits until the worker has a pool process and answers a no-op task.
status=0
"$py" "$here/bench.py" "${json[@]}" --worker-pid "$worker_pid" \
  --redis-pid "$redis_pid" --workdir "$tmp/work" --idle-seconds "$idle_seconds" \
  --pickup-count "$pickup_count" --cancel-reps "$cancel_reps" || status=$?
if [ "$status" != 0 ]; then
  say "bench.py failed ($status); worker log:"
  tail -n 30 "$tmp/worker.out" >&2 || true
  tail -n 50 "$tmp/worker.log" >&2 || true
  exit "$status"
fi
if grep -q -E 'ERROR|CRITICAL' "$tmp/worker.log"; then
  say "note: the worker logged errors (expected ones: terminated tasks):"
  grep -E 'ERROR|CRITICAL' "$tmp/worker.log" | sort | uniq -c | sort -rn | head -n 5 >&2
fi
