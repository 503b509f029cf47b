"""Test a pack the way a robot runs it: as a child process spoken to in JSON
lines (docs/action-packs.md). Standard library only; works for a pack in any
language. Used by the tests of the helper and of the packs in this
repository.

    with PackProcess([sys.executable, "my_pack.py"], cwd=work) as pack:
        pack.ready()
        answer, events = pack.call("greet", {"name": "Ada"})
        assert answer["type"] == "result"
        assert pack.shutdown() == 0
"""

import json
import os
import queue
import subprocess
import threading

TIMEOUT = 20  # seconds; generous, so a slow CI machine is not a failure


def clean_env(extra=None):
    """The environment a robot gives a pack: a few variables a program needs,
    the manifest's `env` and the TASUKI_ ones. A pack that works here does
    not depend on the tester's shell."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "SYSTEMROOT", "TEMP", "TMP") if k in os.environ}
    env["TASUKI_PACK_PROTOCOL"] = "1"
    # Not the robot's doing: keeps test runs from leaving __pycache__ folders
    # in the packs' source folders.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


class PackProcess:
    """A running pack. Every read has a timeout, so a pack that hangs fails
    the test instead of hanging it."""

    def __init__(self, command, cwd=None, env=None):
        self.cwd = os.path.abspath(cwd or os.getcwd())
        self.process = subprocess.Popen(
            command,
            cwd=self.cwd,
            env=env if env is not None else clean_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._lines = queue.Queue()
        self._stderr = []
        self._next_id = 0
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(TIMEOUT)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            try:
                stream.close()
            except OSError:
                pass

    def _pump(self):
        for raw in iter(self.process.stdout.readline, b""):
            self._lines.put(raw)
        self._lines.put(None)

    def _pump_stderr(self):
        for raw in iter(self.process.stderr.readline, b""):
            self._stderr.append(raw.decode("utf-8", "replace"))

    @property
    def stderr(self):
        return "".join(self._stderr)

    def send(self, message):
        """Send a message (a dict) or raw bytes, which are sent as they are.
        A dict is written as the robot writes it: compact, UTF-8 unescaped."""
        if not isinstance(message, bytes):
            message = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        data = message
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def read(self, timeout=TIMEOUT):
        """The next line of the pack's output, which must be a JSON object
        terminated by a newline."""
        try:
            raw = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no answer within {timeout} s; stderr:\n{self.stderr}") from None
        if raw is None:
            raise AssertionError(f"the pack closed its output; stderr:\n{self.stderr}")
        if not raw.endswith(b"\n"):
            raise AssertionError(f"a line without its newline: {raw!r}")
        message = json.loads(raw.decode("utf-8"))
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise AssertionError(f"not a message: {raw!r}")
        return message

    def ready(self):
        message = self.read()
        if message != {"type": "ready", "protocol": 1}:
            raise AssertionError(f"expected ready first, got {message}")
        return message

    def start(self, action, args=None, context=None):
        """Send a `run` and return its id, without waiting for the answer."""
        self._next_id += 1
        request_id = str(self._next_id)
        full = {
            "session_id": "local-test",
            "step_id": action,
            "attempt": 1,
            "work_dir": self.cwd,
            "artifacts_dir": os.path.join(self.cwd, "artifacts"),
        }
        full.update(context or {})
        self.send({"type": "run", "id": request_id, "action": action, "args": args or {}, "context": full})
        return request_id

    def answer(self, request_id, timeout=TIMEOUT):
        """Read until the `result` or `error` of request_id. Returns it and
        the `log`/`artifact` messages before it, checking on the way what the
        robot checks: known types, fields of the right type, ids that are open."""
        events = []
        while True:
            message = self.read(timeout)
            kind = message["type"]
            if kind not in ("log", "artifact", "result", "error"):
                raise AssertionError(f"unexpected message: {message}")
            if message.get("id", request_id if kind in ("log", "artifact") else None) != request_id:
                raise AssertionError(f"a message for a request that is not open ({request_id}): {message}")
            if kind == "log":
                assert message["level"] in ("debug", "info", "warn", "error"), message
                assert isinstance(message["message"], str), message
            if kind == "artifact":
                assert isinstance(message["path"], str), message
            if kind == "error":
                assert isinstance(message["code"], str) and isinstance(message["message"], str), message
            if kind in ("result", "error"):
                return message, events
            events.append(message)

    def call(self, action, args=None, context=None, timeout=TIMEOUT):
        """Run one action and return (answer, events)."""
        return self.answer(self.start(action, args, context), timeout)

    def shutdown(self, timeout=TIMEOUT):
        """Send `shutdown`, close standard input, as the robot does, and
        return the exit code. Nothing more may be written before exit."""
        self.send({"type": "shutdown"})
        return self.close(timeout)

    def close(self, timeout=TIMEOUT):
        """Close standard input and return the exit code."""
        self.process.stdin.close()
        code = self.process.wait(timeout)
        extra = self._lines.get(timeout=timeout)
        if extra is not None:
            raise AssertionError(f"the pack wrote after its last answer: {extra!r}")
        return code


def check_schema(value, schema, path="$"):
    """The subset of JSON Schema the robot enforces (docs/action-packs.md:
    type, properties, required, additionalProperties, items, enum, const,
    oneOf, anyOf, minimum, maximum). Returns a list of problems, empty if the
    value matches: a test can so check outputs against the manifest, since
    an output that does not match fails the step with `pack_bad_output`."""
    if schema is True or schema == {}:
        return []
    if schema is False:
        return [f"{path}: no value allowed"]
    for key in ("oneOf", "anyOf"):
        if key in schema:
            branches = [check_schema(value, b, path) for b in schema[key]]
            return [] if any(not b for b in branches) else min(branches, key=len)
    if "const" in schema:
        return [] if value == schema["const"] else [f"{path}: expected {schema['const']!r}"]
    if "enum" in schema:
        return [] if value in schema["enum"] else [f"{path}: expected one of {schema['enum']!r}"]
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_is(t, value) for t in types):
            return [f"{path}: expected {'/'.join(types)}, found {json.dumps(value)[:80]}"]
    problems = []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{path}: below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{path}: above {schema['maximum']}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += check_schema(item, schema["items"], f"{path}[{i}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                problems.append(f"{path}.{name}: missing")
        for key, item in value.items():
            if key in properties:
                problems += check_schema(item, properties[key], f"{path}.{key}")
            elif "additionalProperties" in schema:
                problems += check_schema(item, schema["additionalProperties"], f"{path}.{key}")
    return problems


def _is(kind, value):
    if kind == "integer":  # as the robot reads JSON: 2.0 is a number, not an integer
        return isinstance(value, int) and not isinstance(value, bool)
    return {
        "null": value is None,
        "boolean": isinstance(value, bool),
        "string": isinstance(value, str),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }.get(kind, False)
