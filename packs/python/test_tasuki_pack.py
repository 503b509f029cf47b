"""Tests of tasuki_pack: a pack built on it (testdata/demo_pack.py) runs as a
real child process and is spoken to over the protocol, as a robot would.

Run from the repository root: python3 -m unittest discover -s packs/python -v
"""

import os
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import tasuki_pack  # noqa: E402
from tasuki_pack_testing import PackProcess, clean_env  # noqa: E402

DEMO = os.path.join(HERE, "testdata", "demo_pack.py")


class DemoPackTest(unittest.TestCase):
    def start(self, env=None):
        work = tempfile.TemporaryDirectory()
        self.addCleanup(work.cleanup)
        self.work = work.name
        pack = PackProcess([sys.executable, DEMO], cwd=self.work, env=clean_env({"PYTHONPATH": HERE, **(env or {})}))
        self.addCleanup(pack.__exit__)
        return pack

    def test_ready_comes_first(self):
        pack = self.start()
        self.assertEqual(pack.read(), {"type": "ready", "protocol": 1})

    def test_a_call_logs_keeps_an_artifact_and_answers(self):
        pack = self.start()
        pack.ready()
        answer, events = pack.call("greet", {"name": "Ada"}, {"step_id": "hello", "attempt": 2})
        self.assertEqual(answer["type"], "result", answer)
        artifacts = os.path.join(self.work, "artifacts")
        self.assertEqual(
            answer["output"],
            {"greeting": "hello, Ada", "context": ["local-test", "hello", 2, self.work, artifacts]},
        )
        self.assertEqual(
            events,
            [
                {"type": "log", "id": "1", "level": "info", "message": "greeting Ada"},
                {"type": "artifact", "id": "1", "path": "greeting.txt"},
            ],
        )
        with open(os.path.join(artifacts, "greeting.txt"), encoding="utf-8") as f:
            self.assertEqual(f.read(), "hello, Ada\n")
        answer, _ = pack.call("greet", {"name": "Bo", "polite": True})
        self.assertEqual(answer["output"]["greeting"], "good day, Bo")

    def test_state_carries_between_calls(self):
        pack = self.start()
        pack.ready()
        first, _ = pack.call("remember", {"value": {"rows": [1, 2]}})
        second, _ = pack.call("remember", {"value": "next"})
        self.assertEqual(first["output"], {"previous": None, "calls": 1})
        self.assertEqual(second["output"], {"previous": {"rows": [1, 2]}, "calls": 2})

    def test_an_exception_is_a_pack_exception_with_the_traceback_on_stderr(self):
        pack = self.start()
        pack.ready()
        answer, _ = pack.call("boom")
        self.assertEqual(answer, {"type": "error", "id": "1", "code": "pack_exception", "message": "ValueError: kaput"})
        self.assertEqual(pack.shutdown(), 0)
        self.assertIn("Traceback", pack.stderr)
        self.assertIn('raise ValueError("kaput")', pack.stderr)

    def test_action_failed_answers_its_code(self):
        pack = self.start()
        pack.ready()
        answer, _ = pack.call("refuse", {"code": "sheet_not_found", "message": "no sheet `Q3` in in.xlsx"})
        self.assertEqual(
            answer, {"type": "error", "id": "1", "code": "sheet_not_found", "message": "no sheet `Q3` in in.xlsx"}
        )
        # A code the robot would refuse is the pack's bug, caught in the pack.
        answer, _ = pack.call("refuse", {"code": "Not A Code", "message": "x"})
        self.assertEqual(answer["code"], "pack_exception")
        self.assertIn("ValueError: error code 'Not A Code'", answer["message"])

    def test_an_unknown_action_is_named_with_the_known_ones(self):
        pack = self.start()
        pack.ready()
        answer, _ = pack.call("nope")
        self.assertEqual(answer["code"], "unknown_action")
        self.assertIn("`nope`", answer["message"])
        self.assertIn("it has: big, boom, greet, late_log, noisy", answer["message"])

    def test_arguments_the_function_does_not_take_are_bad_args(self):
        pack = self.start()
        pack.ready()
        answer, _ = pack.call("greet", {"name": "Ada", "colour": "red"})
        self.assertEqual(answer["code"], "bad_args")
        self.assertIn("colour", answer["message"])
        answer, _ = pack.call("greet", {})
        self.assertEqual(answer["code"], "bad_args")

    def test_a_cancel_is_noticed_while_the_action_runs(self):
        pack = self.start()
        pack.ready()
        request = pack.start("wait", {"seconds": 60})
        self.assertEqual(pack.read(), {"type": "log", "id": request, "level": "info", "message": "waiting"})
        sent = time.monotonic()
        pack.send({"type": "cancel", "id": request})
        answer, events = pack.answer(request, timeout=2)
        self.assertLess(time.monotonic() - sent, 2)
        self.assertEqual(events, [])
        self.assertEqual((answer["type"], answer["id"], answer["code"]), ("error", request, "cancelled"))
        # The pack goes on serving, and a late cancel of an answered request
        # (it crossed the answer) is harmless.
        pack.send({"type": "cancel", "id": request})
        answer, _ = pack.call("remember", {"value": 1})
        self.assertEqual(answer["type"], "result")
        self.assertEqual(pack.shutdown(), 0)

    def test_shutdown_exits_0(self):
        pack = self.start()
        pack.ready()
        pack.call("remember", {"value": 1})
        self.assertEqual(pack.shutdown(), 0)

    def test_end_of_input_exits_0(self):
        pack = self.start()
        pack.ready()
        self.assertEqual(pack.close(), 0)

    def test_end_of_input_lets_the_running_action_answer_first(self):
        pack = self.start()
        pack.ready()
        request = pack.start("wait", {"seconds": 0.3})
        pack.process.stdin.close()
        answer, _ = pack.answer(request)
        self.assertEqual(answer["output"], {"stopped": False})
        self.assertEqual(pack.process.wait(10), 0)

    def test_malformed_lines_are_reported_on_stderr_and_ignored(self):
        pack = self.start()
        pack.ready()
        for line in (b"not json\n", b"[1]\n", b"\xff\xfe\n", b'{"type":"run","action":"boom"}\n', b'{"type":"hello"}\n', b"\n"):
            pack.send(line)
        answer, _ = pack.call("remember", {"value": 1})
        self.assertEqual(answer, {"type": "result", "id": "1", "output": {"previous": None, "calls": 1}})
        self.assertEqual(pack.shutdown(), 0)
        self.assertEqual(pack.stderr.count("tasuki_pack: ignored"), 5, pack.stderr)

    def test_a_run_with_a_missing_field_is_answered_bad_request(self):
        pack = self.start()
        pack.ready()
        pack.send({"type": "run", "id": "7", "action": "boom", "args": {}, "context": {"session_id": "s"}})
        answer, _ = pack.answer("7")
        self.assertEqual(answer["code"], "bad_request")
        self.assertIn("context.step_id", answer["message"])

    def test_unknown_fields_are_ignored(self):
        pack = self.start()
        pack.ready()
        pack.send(
            {
                "type": "run", "id": "x", "action": "remember", "args": {"value": 3}, "later": True,
                "context": {"session_id": "s", "step_id": "a", "attempt": 1, "work_dir": self.work,
                            "artifacts_dir": self.work, "also_later": 1},
            }
        )
        answer, _ = pack.answer("x")
        self.assertEqual(answer["output"]["calls"], 1)

    def test_stray_writes_stay_off_the_protocol_and_text_is_utf8_in_any_locale(self):
        # An ASCII locale, with Python's UTF-8 coercions turned off.
        pack = self.start({"LANG": "C", "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"})
        pack.ready()
        answer, events = pack.call("noisy")
        self.assertEqual(answer["output"], {"text": "héllo ✓ \u2028 \"quoted\"\nnext line", "stolen": ""})
        self.assertEqual(len(events), 100)
        self.assertEqual({e["level"] for e in events}, {"debug"})
        answer, _ = pack.call("remember", {"value": "ünïcode"})  # stdin was not stolen
        self.assertEqual(pack.call("remember", {"value": 0})[0]["output"]["previous"], "ünïcode")
        self.assertEqual(pack.shutdown(), 0)
        self.assertIn("a stray print", pack.stderr)
        self.assertIn("a child process writing to its stdout", pack.stderr)

    def test_an_output_that_is_not_json_is_a_pack_exception(self):
        pack = self.start()
        pack.ready()
        answer, _ = pack.call("not_json")
        self.assertEqual(answer["code"], "pack_exception")
        self.assertIn("not JSON", answer["message"])

    def test_an_output_too_long_for_a_line_is_an_error_and_the_pack_lives_on(self):
        pack = self.start()
        pack.ready()
        answer, _ = pack.call("big", {"size": 16 * 1024 * 1024})
        self.assertEqual(answer["code"], "pack_output_too_large")
        self.assertEqual(pack.call("big", {"size": 3})[0]["output"], "xxx")

    def test_a_log_after_the_answer_loses_its_id(self):
        pack = self.start()
        pack.ready()
        self.assertEqual(pack.call("late_log")[0], {"type": "result", "id": "1", "output": None})
        answer, events = pack.call("wait", {"seconds": 1})
        self.assertEqual(answer["type"], "result")
        self.assertIn({"type": "log", "level": "info", "message": "late"}, events)
        self.assertEqual(pack.shutdown(), 0)


class InProcessTest(unittest.TestCase):
    def test_lines_are_compact_utf8_and_reject_nan(self):
        self.assertEqual(tasuki_pack._encode({"m": "é\n"}), '{"m":"é\\n"}\n'.encode("utf-8"))
        with self.assertRaises(ValueError):
            tasuki_pack._encode({"x": float("nan")})

    def test_names_and_codes_are_checked_where_they_are_written(self):
        pack = tasuki_pack.Pack()
        with self.assertRaises(ValueError):
            pack.action("Read-Sheet")
        pack.action("ok")(lambda ctx: None)
        with self.assertRaises(ValueError):
            pack.action("ok")(lambda ctx: None)
        with self.assertRaises(ValueError):
            tasuki_pack.ActionFailed("x" * 65, "too long")
        self.assertEqual(tasuki_pack.ActionFailed("a.b-c_1", "m").code, "a.b-c_1")


if __name__ == "__main__":
    unittest.main()
