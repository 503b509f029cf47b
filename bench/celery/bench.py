"""Client side of the Celery peer benchmark; run.sh starts Redis and the
worker, then runs this with the worker's PID. See README.md.

Prints a Markdown report on stdout, or JSON with --json. Progress goes to
stderr.
"""

import argparse
import glob
import json
import math
import os
import platform
import signal
import sys
import time

import billiard
import celery
import kombu
import redis

import tasks

CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.0005  # 0.5 ms between /proc polls
ORPHAN_AFTER_S = 2.0
NEXT_TASK_TIMEOUT_S = 30.0


def log(msg):
    print(f"bench.py: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- statistics

def p50(values):
    """The median; the mean of the two middle values for an even count
    (as bench/src/stats.rs)."""
    v = sorted(values)
    n = len(v)
    if n == 0:
        return None
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def p99(values):
    """Nearest rank: the ceil(0.99 n)-th smallest value (the max for n < 100)."""
    v = sorted(values)
    if not v:
        return None
    return v[max(0, math.ceil(0.99 * len(v)) - 1)]


def summary_ms(values_s):
    ms = [x * 1000 for x in values_s]
    return {
        "n": len(ms),
        "p50_ms": p50(ms),
        "p99_ms": p99(ms),
        "min_ms": min(ms) if ms else None,
        "max_ms": max(ms) if ms else None,
    }


# ---------------------------------------------------------------- /proc

def proc_status(pid):
    """Fields of /proc/<pid>/status, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def alive(pid):
    """True while the process exists and is not a zombie."""
    st = proc_status(pid)
    return st is not None and not st.get("State", "").startswith("Z")


def proc_stat(pid):
    """Fields of /proc/<pid>/stat after the command name (index 0 = state)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2:].split()


def children(pid):
    out = []
    for path in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(path) as f:
                text = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(path.split("/")[2]))
    return sorted(out)


def cpu_ticks(pid):
    fields = proc_stat(pid)
    if fields is None:
        return None
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_kib(pid):
    st = proc_status(pid)
    if st is None or "VmRSS" not in st:
        return 0
    return int(st["VmRSS"].split()[0])


def kill_if_ours(pid):
    """SIGKILL a leftover shell/sleep of the cancel test (checked by name so
    that a recycled PID is never hit)."""
    st = proc_status(pid)
    if st is not None and st.get("Name") in ("sh", "sleep"):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- worker

def wait_ready(worker_pid, timeout=60.0):
    """Until the pool has a live process and a no-op task round-trips."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(worker_pid):
            raise SystemExit("bench.py: the celery worker died")
        if children(worker_pid):
            try:
                tasks.noop.apply_async().get(timeout=5)
                return
            except Exception as exc:  # noqa: BLE001 - retry until the deadline
                log(f"worker not ready yet: {exc!r}")
        time.sleep(0.01)
    raise SystemExit("bench.py: the celery worker did not become ready")


# ---------------------------------------------------------------- benchmarks

def bench_ping(r, count):
    for _ in range(20):
        r.ping()
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        r.ping()
        out.append(time.perf_counter() - t0)
    return out


def bench_pickup(count):
    for _ in range(20):  # warm-up, not counted
        tasks.stamp.apply_async().get(timeout=10)
    from_call, pickup, send, roundtrip = [], [], [], []
    for _ in range(count):
        before = time.time()
        res = tasks.stamp.apply_async()
        after = time.time()
        started = res.get(timeout=10)
        done = time.time()
        # The interval Tasuki's pickup is measured over: from just before
        # the client's call to the first line of the work.
        from_call.append(started - before)
        pickup.append(started - after)
        send.append(after - before)
        roundtrip.append(done - before)
    return from_call, pickup, send, roundtrip


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def cancel_once(task, prefix, worker_pid):
    res = task.apply_async((prefix,))
    deadline = time.monotonic() + 20
    pids = {}
    while len(pids) < 3:
        for key in ("pool", "child", "grandchild"):
            if key not in pids:
                pid = read_pid(f"{prefix}.{key}")
                if pid is not None:
                    pids[key] = pid
        if time.monotonic() > deadline:
            raise SystemExit(f"bench.py: task {task.name} did not start its processes: {pids}")
        time.sleep(POLL_S)
    # Queued behind the running task: it runs as soon as the pool has a live
    # process again, so its completion marks "worker ready for the next job".
    nxt = tasks.noop.apply_async()

    tasks.app.control.revoke(res.id, terminate=True, signal="SIGTERM")
    t0 = time.perf_counter()

    events = dict.fromkeys(EVENTS)
    orphans = None
    while True:
        now = time.perf_counter() - t0
        if orphans is None:
            for key in ("pool", "child", "grandchild"):
                if events[key] is None and not alive(pids[key]):
                    events[key] = now
        if events["revoked"] is None and res.state == "REVOKED":
            events["revoked"] = now
        if events["next_done"] is None and nxt.ready():
            events["next_done"] = now
        if orphans is None and now >= ORPHAN_AFTER_S:
            # Judged once, at the 2 s mark; then killed so that they do not
            # pile up (the worker may still be respawning its pool process).
            orphans = [k for k in ("child", "grandchild") if alive(pids[k])]
            for k in ("child", "grandchild"):
                kill_if_ours(pids[k])
        if orphans is not None and events["next_done"] is not None:
            break
        if now >= NEXT_TASK_TIMEOUT_S:
            log(f"warning: the next task did not finish within {NEXT_TASK_TIMEOUT_S} s of the revoke")
            break
        # Poll /proc every 0.5 ms until all the processes are gone; after
        # that only the backend, more gently.
        busy = orphans is None and any(
            events[k] is None for k in ("pool", "revoked", "child", "grandchild"))
        time.sleep(POLL_S if busy else 0.005)
    next_state = nxt.state
    wait_ready(worker_pid)
    return events, orphans, next_state


EVENTS = ("pool", "revoked", "next_done", "child", "grandchild")


def bench_cancel(task, reps, workdir, worker_pid):
    rows = []
    for i in range(reps):
        prefix = os.path.join(workdir, f"{task.name}-{i}")
        events, orphans, next_state = cancel_once(task, prefix, worker_pid)
        rows.append({"events": events, "orphans": orphans, "next_state_at_2s": next_state})

    def col(key):
        return [r["events"][key] for r in rows if r["events"][key] is not None]

    return {
        "task": task.name,
        "reps": reps,
        "revoke_to_pool_process_exit": summary_ms(col("pool")),
        "revoke_to_state_revoked": summary_ms(col("revoked")),
        "revoke_to_next_task_done": summary_ms(col("next_done")),
        "revoke_to_child_exit": summary_ms(col("child")),
        "revoke_to_grandchild_exit": summary_ms(col("grandchild")),
        "orphans_child": sum("child" in r["orphans"] for r in rows),
        "orphans_grandchild": sum("grandchild" in r["orphans"] for r in rows),
        "reps_with_orphans": sum(bool(r["orphans"]) for r in rows),
        "runs": rows,
    }


def bench_idle(worker_pid, redis_pid, seconds):
    wait_ready(worker_pid)
    pids = [worker_pid] + children(worker_pid)
    start = {p: cpu_ticks(p) for p in pids}
    redis_start = cpu_ticks(redis_pid)
    log(f"idle window: {seconds} s, worker processes {pids}")
    time.sleep(seconds)
    end_pids = [worker_pid] + children(worker_pid)
    if sorted(end_pids) != sorted(pids):
        log(f"warning: worker processes changed during the idle window: {pids} -> {end_pids}")
    ticks = sum(cpu_ticks(p) - start[p] for p in pids
                if start.get(p) is not None and cpu_ticks(p) is not None)
    return {
        "seconds": seconds,
        "processes": len(end_pids),
        "worker_rss_mib": sum(rss_kib(p) for p in end_pids) / 1024,
        "worker_rss_main_mib": rss_kib(worker_pid) / 1024,
        "worker_cpu_s": ticks / CLK_TCK,
        "redis_rss_mib": rss_kib(redis_pid) / 1024,
        "redis_cpu_s": (cpu_ticks(redis_pid) - redis_start) / CLK_TCK,
    }


# ---------------------------------------------------------------- report

def machine_info(r):
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "billiard": billiard.__version__,
        "redis_py": redis.__version__,
        "redis_server": r.info("server").get("redis_version", "?"),
    }


def fmt(x):
    return "n/a" if x is None else f"{x:.2f}"


def markdown(res):
    m = res["machine"]
    out = []
    out.append("## Celery peer benchmark")
    out.append("")
    out.append(f"Machine: {m['nproc']} CPUs, {m['cpu_model']}, Linux {m['kernel']}; "
               f"Python {m['python']}, Celery {m['celery']} (kombu {m['kombu']}, "
               f"billiard {m['billiard']}), redis-py {m['redis_py']}, "
               f"redis-server {m['redis_server']}. Worker: prefork, concurrency 1, "
               "without gossip/mingle/heartbeat, Redis broker and result backend on loopback.")
    out.append("")
    out.append("### Pickup latency")
    out.append("")
    out.append("| measurement | n | p50 ms | p99 ms | max ms |")
    out.append("| --- | ---: | ---: | ---: | ---: |")
    rows = [
        ("apply_async called → task body starts (Tasuki's pickup interval)",
         res["pickup"]["from_call"]),
        ("apply_async returned → task body starts", res["pickup"]["pickup"]),
        ("apply_async call itself", res["pickup"]["apply_async"]),
        ("apply_async → result.get returns (round trip)", res["pickup"]["roundtrip"]),
        ("baseline: one Redis PING round trip (redis-py)", res["redis_ping"]),
    ]
    for name, s in rows:
        out.append(f"| {name} | {s['n']} | {fmt(s['p50_ms'])} | {fmt(s['p99_ms'])} | {fmt(s['max_ms'])} |")
    out.append("")
    out.append("### Cancel latency (revoke(terminate=True, signal='SIGTERM'))")
    out.append("")
    out.append("Times from `revoke()` returning, p50 / p99 ms (p99 of 20 = max); "
               "'alive: k' = k of the reps where that process was still alive 2 s after the revoke (an orphan).")
    out.append("")
    out.append("| task variant | reps | pool process exited | state REVOKED | next task done | "
               "shell child exited | grandchild exited | orphans after 2 s |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    desc = {"bench.hang_run": "`subprocess.run`",
            "bench.hang_popen": "`Popen().wait()`",
            "bench.hang_killpg": "extra: `Popen(start_new_session=True)` + own SIGTERM handler that kills the group"}

    def cell(s, alive_count=0):
        txt = f"{fmt(s['p50_ms'])} / {fmt(s['p99_ms'])}" if s["n"] else "never"
        return txt + (f" (alive: {alive_count})" if alive_count else "")

    for c in res["cancel"]:
        orphans = c["orphans_child"] + c["orphans_grandchild"]
        out.append(f"| {desc.get(c['task'], c['task'])} | {c['reps']} | "
                   f"{cell(c['revoke_to_pool_process_exit'])} | {cell(c['revoke_to_state_revoked'])} | "
                   f"{cell(c['revoke_to_next_task_done'])} | "
                   f"{cell(c['revoke_to_child_exit'], c['orphans_child'])} | "
                   f"{cell(c['revoke_to_grandchild_exit'], c['orphans_grandchild'])} | "
                   f"{orphans} of {2 * c['reps']} processes |")
    out.append("")
    i = res["idle"]
    out.append(f"### Idle ({i['seconds']} s)")
    out.append("")
    out.append("| process | RSS MiB | CPU s over the window |")
    out.append("| --- | ---: | ---: |")
    out.append(f"| celery worker (main + {i['processes'] - 1} pool process) | "
               f"{i['worker_rss_mib']:.1f} | {i['worker_cpu_s']:.2f} |")
    out.append(f"| redis-server (broker, for reference) | {i['redis_rss_mib']:.1f} | {i['redis_cpu_s']:.2f} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker-pid", type=int, required=True)
    ap.add_argument("--redis-pid", type=int, required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--idle-seconds", type=float, default=300)
    ap.add_argument("--pickup-count", type=int, default=500)
    ap.add_argument("--cancel-reps", type=int, default=20)
    args = ap.parse_args()

    r = redis.Redis.from_url(tasks.REDIS_URL)
    wait_ready(args.worker_pid)
    res = {"machine": machine_info(r)}

    log(f"Redis PING baseline ({args.pickup_count})")
    res["redis_ping"] = summary_ms(bench_ping(r, args.pickup_count))
    log(f"pickup latency ({args.pickup_count} tasks, one at a time)")
    from_call, pickup, send, roundtrip = bench_pickup(args.pickup_count)
    res["pickup"] = {"from_call": summary_ms(from_call), "pickup": summary_ms(pickup),
                     "apply_async": summary_ms(send), "roundtrip": summary_ms(roundtrip)}

    res["cancel"] = []
    for task in (tasks.hang_run, tasks.hang_popen, tasks.hang_killpg):
        log(f"cancel latency: {task.name} ({args.cancel_reps} reps)")
        res["cancel"].append(bench_cancel(task, args.cancel_reps, args.workdir, args.worker_pid))

    log(f"idle: {args.idle_seconds} s")
    res["idle"] = bench_idle(args.worker_pid, args.redis_pid, args.idle_seconds)

    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(markdown(res))


if __name__ == "__main__":
    main()
