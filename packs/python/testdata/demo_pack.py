"""A pack that exercises every part of tasuki_pack, for test_tasuki_pack.py."""

import os
import subprocess
import sys
import threading
import time

from tasuki_pack import ActionFailed, Pack

pack = Pack()
calls = 0  # a module global: lives as long as the process, like ctx.state


@pack.action("greet")
def greet(ctx, name, polite=False):
    ctx.log("info", f"greeting {name}")
    os.makedirs(ctx.artifacts_dir, exist_ok=True)
    with open(os.path.join(ctx.artifacts_dir, "greeting.txt"), "w", encoding="utf-8") as f:
        f.write(f"hello, {name}\n")
    ctx.artifact("greeting.txt")
    return {
        "greeting": f"{'good day' if polite else 'hello'}, {name}",
        "context": [ctx.session_id, ctx.step_id, ctx.attempt, ctx.work_dir, ctx.artifacts_dir],
    }


@pack.action("remember")
def remember(ctx, value):
    global calls
    calls += 1
    previous = ctx.state.get("value")
    ctx.state["value"] = value
    return {"previous": previous, "calls": calls}


@pack.action("boom")
def boom(ctx):
    raise ValueError("kaput")


@pack.action("refuse")
def refuse(ctx, code, message):
    raise ActionFailed(code, message)


@pack.action("wait")
def wait(ctx, seconds=30):
    """Loops until cancelled, then returns normally: the helper answers `cancelled`."""
    ctx.log("info", "waiting")
    deadline = time.monotonic() + seconds
    while not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"stopped": ctx.cancelled}


@pack.action("noisy")
def noisy(ctx):
    """Writes where a careless action would: none of it may reach the protocol."""
    print("a stray print")
    sys.stdout.write("more stray text without a newline")
    subprocess.run([sys.executable, "-c", "print('a child process writing to its stdout')"], check=True)
    stolen = sys.stdin.read()  # must not eat the robot's next request
    logger = threading.Thread(target=lambda: [ctx.log("debug", f"from a thread {i}") for i in range(50)])
    logger.start()
    for i in range(50):
        ctx.log("debug", f"from the main thread {i}")
    logger.join()
    return {"text": "héllo ✓ \u2028 \"quoted\"\nnext line", "stolen": stolen}


@pack.action("big")
def big(ctx, size):
    return "x" * size


@pack.action("late_log")
def late_log(ctx):
    """Logs from a thread after the request was answered."""
    threading.Timer(0.2, ctx.log, ("info", "late")).start()
    return None


@pack.action("not_json")
def not_json(ctx):
    return {"when": object()}


if __name__ == "__main__":
    pack.serve()
