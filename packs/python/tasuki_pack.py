"""The pack side of the Tasuki action-pack protocol, version 1, for Python 3.9+.

docs/action-packs.md is the contract. A pack is a module of functions:

    from tasuki_pack import Pack, ActionFailed

    pack = Pack()

    @pack.action("greet")
    def greet(ctx, name):
        ctx.log("info", f"greeting {name}")
        return {"greeting": f"hello, {name}"}

    if __name__ == "__main__":
        pack.serve()

Standard library only, so that a pack needs nothing installed but its own
dependencies. One file, so that a pack can also simply copy it.
"""

import inspect
import json
import os
import queue
import re
import sys
import threading
import traceback

__all__ = ["Pack", "Context", "ActionFailed", "PROTOCOL"]

PROTOCOL = 1
LEVELS = ("debug", "info", "warn", "error")
# The robot ends a pack that writes a longer line (pack_output_too_large), and
# its state with it; an output this long is answered as an error instead.
MAX_LINE_BYTES = 16 * 1024 * 1024
# The robot cuts log messages far shorter than this (16 KiB by default); this
# only keeps a runaway message from becoming a line the robot ends the pack for.
MAX_LOG_CHARS = 1024 * 1024
# The manifest's rule for pack and action names, and the protocol's rule for
# error codes: checked here so that a mistake shows up in the pack's own
# traceback rather than as a protocol error on the robot's side.
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
_CODE = re.compile(r"[a-z0-9_.-]{1,64}\Z")


def _warn(text):
    """Standard error is free text: the robot turns each line into a `warn`
    log line of the running step, so problems the pack can only report
    (a malformed request, a traceback) are written there."""
    print(f"tasuki_pack: {text}", file=sys.stderr, flush=True)


def _encode(message):
    """One protocol line. ensure_ascii=False keeps text readable (the stream is
    UTF-8 whatever the locale); allow_nan=False because NaN is not JSON and the
    robot would reject the whole line. json.dumps escapes newlines inside
    strings, so the line can never be split."""
    text = json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8") + b"\n"


class ActionFailed(Exception):
    """Raise from an action to answer the request with `error` and this code.

    The code becomes the step's error code (what `try`/`catch` matches), so
    it must follow the protocol's rule: 1 to 64 of `a-z 0-9 _ . -`.
    """

    def __init__(self, code, message):
        if not isinstance(code, str) or not _CODE.match(code):
            raise ValueError(f"error code {code!r}: use 1 to 64 of a-z, 0-9, '_', '.', '-'")
        super().__init__(message)
        self.code = code
        self.message = str(message)


class _BadRequest(Exception):
    """A `run` whose fields are missing or mistyped (the robot's mistake)."""


def _field(obj, name, kind, where):
    value = obj.get(name)
    # bool is an int in Python, but `true` is not an attempt number.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _BadRequest(f"`{where}{name}` is missing or not {kind.__name__}")
    return value


class Context:
    """What an action knows about the step it runs for, and how it talks back.

    `state` is one dict for the whole process: the robot keeps a pack's
    process for the session, so an action can leave something there (an open
    workbook, a logged-in client) for a later step. Module globals work too.
    """

    def __init__(self, pack, message, cancel_flag):
        self._pack = pack
        self._cancel = cancel_flag
        self._answered = False  # set under the pack's output lock, see Pack._write
        self.request_id = message["id"]
        self.action = _field(message, "action", str, "")
        self.args = _field(message, "args", dict, "")
        context = _field(message, "context", dict, "")
        self.session_id = _field(context, "session_id", str, "context.")
        self.step_id = _field(context, "step_id", str, "context.")
        self.attempt = _field(context, "attempt", int, "context.")
        self.work_dir = _field(context, "work_dir", str, "context.")
        self.artifacts_dir = _field(context, "artifacts_dir", str, "context.")
        self.state = pack.state

    @property
    def cancelled(self):
        """True once the robot sent `cancel` for this request (the step was
        cancelled or timed out). A long action should look at it now and
        then and stop; the robot ends a pack that has not answered within
        2 seconds of the cancel. Whatever the action then returns, the
        request is answered `error` with code `cancelled`."""
        return self._cancel.is_set()

    def check_cancelled(self):
        """Raise ActionFailed("cancelled") if the request was cancelled."""
        if self.cancelled:
            raise ActionFailed("cancelled", f"{self.action} was cancelled")

    def log(self, level, message):
        """A log line of this step. Safe from any thread; a line written after
        the request was answered goes to whichever step is running then."""
        if level not in LEVELS:
            raise ValueError(f"log level {level!r}: use one of {', '.join(LEVELS)}")
        message = str(message)[:MAX_LOG_CHARS]
        self._pack._write({"type": "log", "id": self.request_id, "level": level, "message": message}, self)

    def artifact(self, path):
        """Keep a file with the session: write it directly into
        `artifacts_dir` first, then pass its file name (or its absolute path
        there). Must be called before the action returns."""
        self._pack._write({"type": "artifact", "id": self.request_id, "path": os.fspath(path)}, self)


class Pack:
    """A set of actions and the loop that serves them over stdin/stdout."""

    def __init__(self):
        self.state = {}
        self._actions = {}  # name -> (function, signature)
        self._shutdown_hooks = []
        self._out = None  # the protocol stream, set by serve()
        self._out_lock = threading.Lock()
        # Requests read but not answered yet, each with its cancel flag. The
        # reader thread adds them and sets the flags; the main thread removes
        # them once answered.
        self._open = {}
        self._open_lock = threading.Lock()

    def action(self, name):
        """Register `fn(ctx, **args)` as the action `name`: the step's `with`
        arrives as keyword arguments; the return value (any JSON value) is
        the step's output."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"action name {name!r}: 1 to 32 of a-z, 0-9, '_', starting with a letter")

        def register(fn):
            if name in self._actions:
                raise ValueError(f"action {name!r} is registered twice")
            self._actions[name] = (fn, inspect.signature(fn))
            return fn

        return register

    def on_shutdown(self, fn):
        """Register `fn()` to run when the session ends (`shutdown` or end of
        input), to close what is open. Errors are printed and ignored."""
        self._shutdown_hooks.append(fn)
        return fn

    def log(self, level, message):
        """A log line that belongs to no request in particular (the robot gives
        it to the step that is running, or the next one)."""
        if level not in LEVELS:
            raise ValueError(f"log level {level!r}: use one of {', '.join(LEVELS)}")
        self._write({"type": "log", "level": level, "message": str(message)[:MAX_LOG_CHARS]})

    def serve(self):
        """Serve requests until `shutdown` or the end of standard input, then
        run the shutdown hooks and return (so the process exits with 0).

        Requests run one at a time on this (the main) thread; a background
        thread reads standard input, so that a `cancel` is noticed while an
        action runs.
        """
        inp, self._out = _claim_stdio()
        self._write({"type": "ready", "protocol": PROTOCOL})
        inbox = queue.Queue()
        threading.Thread(target=self._read, args=(inp, inbox), name="tasuki-pack-reader", daemon=True).start()
        while True:
            message = inbox.get()
            if message is None or message["type"] == "shutdown":
                break
            self._run(message)
        for hook in self._shutdown_hooks:
            try:
                hook()
            except Exception:
                traceback.print_exc()

    def _read(self, inp, inbox):
        """The reader thread: `cancel` is handled here, at once; `run` and
        `shutdown` are queued for the main thread; None marks end of input.
        The thread is a daemon so that it does not keep the process alive
        after serve() returns."""
        for raw in iter(inp.readline, b""):
            message = _parse(raw)
            if message is None:
                continue
            if message["type"] == "cancel":
                with self._open_lock:
                    flag = self._open.get(message["id"])
                if flag is not None:
                    flag.set()
                # A cancel for a request already answered crossed the answer
                # on the way: nothing to do.
                continue
            if message["type"] == "run":
                with self._open_lock:
                    self._open[message["id"]] = threading.Event()
            inbox.put(message)
        inbox.put(None)

    def _run(self, message):
        """Run one request and answer it exactly once."""
        request_id = message["id"]
        with self._open_lock:
            flag = self._open.get(request_id) or threading.Event()
        ctx = None
        try:
            ctx = Context(self, message, flag)
            registered = self._actions.get(ctx.action)
            if registered is None:
                known = ", ".join(sorted(self._actions)) or "none"
                raise ActionFailed("unknown_action", f"no action `{ctx.action}` in this pack; it has: {known}")
            fn, signature = registered
            try:
                signature.bind(ctx, **ctx.args)
            except TypeError as e:
                # The robot checked `with` against the manifest's schema, so
                # this is a manifest that disagrees with the code.
                raise ActionFailed("bad_args", f"{ctx.action}: {e}") from None
            ctx.check_cancelled()
            output = fn(ctx, **ctx.args)
            ctx.check_cancelled()
            try:
                answer = _encode({"type": "result", "id": request_id, "output": output})
            except (TypeError, ValueError) as e:
                raise ActionFailed("pack_exception", f"{ctx.action} returned an output that is not JSON: {e}") from None
            if len(answer) > MAX_LINE_BYTES:
                raise ActionFailed(
                    "pack_output_too_large", f"{ctx.action}: the output is {len(answer)} bytes; a line holds {MAX_LINE_BYTES}"
                )
        except _BadRequest as e:
            answer = _error(request_id, "bad_request", f"a `run` request the pack cannot read: {e}")
        except ActionFailed as e:
            answer = _error(request_id, e.code, e.message)
        except Exception as e:
            traceback.print_exc()
            text = str(e)
            answer = _error(request_id, "pack_exception", f"{type(e).__name__}: {text}" if text else type(e).__name__)
        if flag.is_set() and (isinstance(answer, bytes) or answer["code"] != "cancelled"):
            # The protocol asks for `cancelled` once a cancel arrived, whatever
            # the action made of it (a result, or a failure the cancel caused).
            answer = _error(request_id, "cancelled", f"{message.get('action')} was cancelled")
        self._write(answer, ctx, answer=True)
        with self._open_lock:
            self._open.pop(request_id, None)

    def _write(self, message, ctx=None, answer=False):
        """Write one whole line and flush it, under a lock, since logs may come
        from any thread. `message` is a dict, or a line already encoded (a
        result, encoded once to check it). A log of a request already answered
        loses its id (the robot would reject an id that is no longer open);
        the check and the write happen under the same lock, so no line can
        slip between an answer and the flag that records it."""
        with self._out_lock:
            if isinstance(message, bytes):
                self._out.write(message)
                self._out.flush()
                ctx._answered = True
                return
            if ctx is not None and ctx._answered:
                if message["type"] == "artifact":
                    raise RuntimeError("artifact() after the action returned: the request is already answered")
                message = {k: v for k, v in message.items() if k != "id"}
            if self._out is None:  # not serving yet: nowhere to send it but stderr
                _warn(json.dumps(message, ensure_ascii=False))
                return
            self._out.write(_encode(message))
            self._out.flush()
            if answer and ctx is not None:
                ctx._answered = True


def _error(request_id, code, message):
    return {"type": "error", "id": request_id, "code": code, "message": message}


def _parse(raw):
    """One line from the robot, or None if it is not a message this loop can
    act on (reported on stderr). `run` is only checked for its id here; its
    other fields are checked when it runs, so that the answer can say what
    is wrong. Unknown fields are ignored, as the protocol asks."""
    if not raw.strip():
        return None
    try:
        message = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        _warn(f"ignored a line that is not UTF-8 JSON ({e}): {raw[:200]!r}")
        return None
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "shutdown":
        return message
    if kind in ("run", "cancel") and isinstance(message.get("id"), str):
        return message
    if kind in ("run", "cancel"):
        _warn(f"ignored a `{kind}` without a string `id`: {raw[:200]!r}")
    else:
        _warn(f"ignored a line that is not a known message: {raw[:200]!r}")
    return None


def _claim_stdio():
    """Take standard input and output for the protocol, and return them as
    binary streams that are read and written as UTF-8 whatever the locale.

    File descriptors 0 and 1 are then pointed at /dev/null and standard
    error, and sys.stdin/sys.stdout with them: a stray print() in an action,
    a library that writes to stdout, or a child process the action starts
    would otherwise write into the protocol stream (and the robot would fail
    the step with `pack_protocol_error`), or read requests meant for the pack.
    """
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "wb")
    inp = os.fdopen(os.dup(0), "rb")
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if hasattr(sys.stderr, "reconfigure"):
        sys.stderr.reconfigure(encoding="utf-8", errors="backslashreplace")
    sys.stdout = sys.stderr
    sys.stdin = open(os.devnull, encoding="utf-8")
    return inp, out
