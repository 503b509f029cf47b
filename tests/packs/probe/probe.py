"""A pack that behaves well or badly on request, for the runtime's tests.

It speaks the protocol by hand, without packs/python/tasuki_pack.py, so
that each failure is exactly the one a test names."""
import json
import os
import subprocess
import sys
import threading
import time

out_lock = threading.Lock()


def send(message):
    with out_lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def raw(text):
    with out_lock:
        sys.stdout.write(text)
        sys.stdout.flush()


state = {}
cancelled = threading.Event()
requests = []
lock = threading.Condition()


def reader():
    for line in sys.stdin:
        message = json.loads(line)
        if message["type"] == "cancel":
            cancelled.set()
        with lock:
            requests.append(message)
            lock.notify()
    with lock:
        requests.append({"type": "eof"})
        lock.notify()


def run(request):
    rid, action, args, ctx = request["id"], request["action"], request["args"], request["context"]
    if action == "hello":
        send({"type": "log", "id": rid, "level": "info", "message": "hello from the pack"})
        sys.stderr.write("a line on stderr\n")
        sys.stderr.flush()
        path = os.path.join(ctx["artifacts_dir"], "hello.txt")
        os.makedirs(ctx["artifacts_dir"], exist_ok=True)
        with open(path, "w") as f:
            f.write("hello, %s (session %s, step %s, attempt %d)\n" % (args["name"], ctx["session_id"], ctx["step_id"], ctx["attempt"]))
        send({"type": "artifact", "id": rid, "path": "hello.txt"})
        send({"type": "result", "id": rid, "output": {"greeting": "hello, " + args["name"], "pid": os.getpid()}})
    elif action == "remember":
        state["value"] = args["value"]
        send({"type": "result", "id": rid, "output": {"pid": os.getpid()}})
    elif action == "recall":
        send({"type": "result", "id": rid, "output": {"value": state.get("value"), "pid": os.getpid()}})
    elif action == "crash":
        sys.stderr.write("Traceback (most recent call last):\nValueError: the probe crashed on purpose\n")
        sys.stderr.flush()
        os._exit(3)
    elif action == "hang":
        child = subprocess.Popen(["sleep", "1000"])
        with open(os.path.join(ctx["work_dir"], "pids.txt"), "w") as f:
            f.write("%d %d\n" % (os.getpid(), child.pid))
        send({"type": "log", "id": rid, "level": "info", "message": "hanging"})
        while True:
            time.sleep(1000)
    elif action == "cooperative":
        cancelled.clear()
        send({"type": "log", "id": rid, "level": "info", "message": "waiting for a cancel"})
        cancelled.wait()
        send({"type": "error", "id": rid, "code": "cancelled", "message": "stopped as asked"})
    elif action == "junk":
        raw("this is not json\n")
    elif action == "unknown_id":
        send({"type": "result", "id": "not-" + rid, "output": None})
    elif action == "twice":
        raw(json.dumps({"type": "result", "id": rid, "output": 1}) + "\n" + json.dumps({"type": "result", "id": rid, "output": 2}) + "\n")
    elif action == "flood":
        chunk = "x" * (1024 * 1024)
        with out_lock:
            sys.stdout.write('{"type":"log","level":"info","message":"')
            for _ in range(20):
                sys.stdout.write(chunk)
            sys.stdout.write('"}\n')
            sys.stdout.flush()
        time.sleep(1000)
    elif action == "bad_output":
        send({"type": "result", "id": rid, "output": {"greeting": 42}})
    elif action == "bad_artifact":
        artifacts = ctx["artifacts_dir"]
        if args["kind"] == "link":
            target = os.path.join(ctx["work_dir"], "secret.txt")
            with open(target, "w") as f:
                f.write("not for the hub\n")
            os.symlink(target, os.path.join(artifacts, "link.txt"))
            path = "link.txt"
        elif args["kind"] == "subfolder":
            os.makedirs(os.path.join(artifacts, "sub"), exist_ok=True)
            with open(os.path.join(artifacts, "sub", "x.txt"), "w") as f:
                f.write("x\n")
            path = "sub/x.txt"
        else:
            path = "/etc/hostname"
        send({"type": "artifact", "id": rid, "path": path})
        send({"type": "result", "id": rid, "output": None})
    elif action == "fail":
        send({"type": "error", "id": rid, "code": args.get("code", "probe_failed"), "message": "failed as asked"})
    elif action == "login":
        password = args["password"]
        send({"type": "log", "id": rid, "level": "info", "message": "logging in with " + password})
        sys.stderr.write("stderr also says " + password + "\n")
        sys.stderr.flush()
        send({"type": "error", "id": rid, "code": "login_failed", "message": "wrong password " + password})
    else:
        send({"type": "error", "id": rid, "code": "unknown_action", "message": action})


def main():
    threading.Thread(target=reader, daemon=True).start()
    send({"type": "ready", "protocol": 1})
    while True:
        with lock:
            while not requests:
                lock.wait()
            message = requests.pop(0)
        if message["type"] == "run":
            threading.Thread(target=run, args=(message,), daemon=True).start() if message["action"] == "cooperative" else run(message)
        elif message["type"] in ("shutdown", "eof"):
            return


main()
