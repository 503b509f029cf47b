"""Celery app and tasks for the Celery peer benchmark (see README.md).

The broker and the result backend are the loopback Redis that run.sh starts;
its URL comes from BENCH_REDIS_URL. Nothing here talks to any other address.
"""

import os
import signal
import subprocess
import time

from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
if not REDIS_URL.startswith(("redis://127.", "redis://localhost")):
    raise SystemExit(f"tasks.py: refusing a non-loopback broker: {REDIS_URL}")

app = Celery("tasks", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # One message in flight per process, the closest to "one job at a time".
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    # Keep the worker quiet and the comparison about task dispatch only.
    worker_send_task_events=False,
    task_send_sent_event=False,
    worker_enable_remote_control=True,  # needed for revoke(terminate=True)
    result_expires=3600,
)

# The shell child records its own PID and its background grandchild's PID,
# then waits on the grandchild: a child with a grandchild, like a robot step
# that runs a script which starts a helper.
SHELL = 'echo $$ > "$1.tmp" && mv "$1.tmp" "$1"; sleep 1000 & echo $! > "$2.tmp" && mv "$2.tmp" "$2"; wait'


def _write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _shell_cmd(prefix):
    return ["sh", "-c", SHELL, "sh", prefix + ".child", prefix + ".grandchild"]


@app.task(name="bench.noop")
def noop():
    return None


@app.task(name="bench.stamp")
def stamp():
    # First line of the body: the worker-side wall clock, compared by the client
    # with its own time.time() taken right after apply_async returned.
    return time.time()


@app.task(name="bench.hang_run")
def hang_run(prefix):
    """Variant 1: subprocess.run (blocks until the shell exits)."""
    _write_atomic(prefix + ".pool", str(os.getpid()))
    subprocess.run(_shell_cmd(prefix))


@app.task(name="bench.hang_popen")
def hang_popen(prefix):
    """Variant 2: Popen(...).wait()."""
    _write_atomic(prefix + ".pool", str(os.getpid()))
    subprocess.Popen(_shell_cmd(prefix)).wait()


@app.task(name="bench.hang_killpg")
def hang_killpg(prefix):
    """Variant 3 (extra, hand-written cleanup): the child is put in its own
    session and a SIGTERM handler in the task kills its process group before
    the pool process exits. This is what a Celery user must write by hand to
    avoid orphans; plain Celery does not do it."""
    proc = subprocess.Popen(_shell_cmd(prefix), start_new_session=True)

    def on_term(signum, frame):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        _write_atomic(prefix + ".pool", str(os.getpid()))
        proc.wait()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
