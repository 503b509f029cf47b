"""Tests of the shout pack (shout.sh, POSIX shell): it runs as a real child
process under `sh` and is spoken to over the protocol (docs/action-packs.md).

Run from the repository root: python3 -m unittest discover -s examples/packs/shout -v
"""

import json
import os
import re
import shutil
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.normpath(os.path.join(HERE, "..", "..", "..", "packs", "python")))

from tasuki_pack_testing import PackProcess, check_schema, clean_env  # noqa: E402

import yaml  # noqa: E402  (reads the manifest; missing, the run fails loudly)

SH = shutil.which("sh")


class ShoutTest(unittest.TestCase):
    def start(self):
        work = tempfile.TemporaryDirectory()
        self.addCleanup(work.cleanup)
        pack = PackProcess(["sh", os.path.join(HERE, "shout.sh")], cwd=work.name, env=clean_env())
        self.addCleanup(pack.__exit__)
        pack.ready()
        return pack

    def test_ready_comes_first(self):
        with PackProcess(["sh", os.path.join(HERE, "shout.sh")], env=clean_env()) as pack:
            self.assertEqual(pack.read(), {"type": "ready", "protocol": 1})

    def test_upper(self):
        pack = self.start()
        answer, events = pack.call("upper", {"text": "hello, World 42 é ✓ {x}: [y]"})
        self.assertEqual(answer, {"type": "result", "id": "1", "output": {"text": "HELLO, WORLD 42 é ✓ {X}: [Y]"}})
        self.assertEqual(events, [])
        self.assertEqual(pack.call("upper", {"text": ""})[0]["output"], {"text": ""})
        self.assertEqual(pack.call("upper", {"text": "%s %d 100%"})[0]["output"], {"text": "%S %D 100%"})

    def test_keys_in_any_order_and_spaces_around_colons(self):
        """The robot writes compact JSON (as PackProcess.send does) with keys
        sorted, or in the order written if serde_json keeps it; spaces after
        `:` are accepted too."""
        pack = self.start()
        context = {"session_id": "s", "step_id": "a", "attempt": 1, "work_dir": "/w", "artifacts_dir": "/a"}
        n = 0
        for keys_sorted in (False, True):
            for separators in ((",", ":"), (", ", ": ")):
                n += 1
                message = {"type": "run", "id": f"r{n}", "action": "upper", "args": {"text": "abc é"}, "context": context}
                text = json.dumps(message, separators=separators, sort_keys=keys_sorted, ensure_ascii=False)
                pack.send(text.encode("utf-8") + b"\n")
                answer, _ = pack.answer(f"r{n}")
                self.assertEqual(answer["output"], {"text": "ABC é"}, text)

    def test_texts_it_cannot_read_are_refused(self):
        pack = self.start()
        for text in ('say "hi"', "back\\slash", "two\nlines", "tab\there"):
            answer, _ = pack.call("upper", {"text": text})
            self.assertEqual(answer["code"], "unsupported_text", text)
        self.assertEqual(pack.call("upper", {"text": "still here"})[0]["output"], {"text": "STILL HERE"})

    def test_fail_and_unknown_actions(self):
        pack = self.start()
        answer, _ = pack.call("fail")
        self.assertEqual((answer["type"], answer["id"], answer["code"]), ("error", "1", "shouted_failure"))
        answer, _ = pack.call("whisper", {"text": "x"})
        self.assertEqual(answer["code"], "unknown_action")

    def test_cancel_is_harmless(self):
        pack = self.start()
        request = pack.start("upper", {"text": "a"})
        pack.send({"type": "cancel", "id": request})
        answer, _ = pack.answer(request)
        self.assertEqual(answer["output"], {"text": "A"})
        pack.send({"type": "cancel", "id": "never-sent"})
        # Nothing was written for the cancels: the next line answers the next request.
        self.assertEqual(pack.call("upper", {"text": "b"})[0]["output"], {"text": "B"})
        self.assertEqual(pack.shutdown(), 0)

    def test_malformed_lines_are_ignored(self):
        pack = self.start()
        pack.send(b"not json\n")
        pack.send(b'{"type":"hello"}\n')
        self.assertEqual(pack.call("upper", {"text": "ok"})[0]["output"], {"text": "OK"})
        self.assertEqual(pack.shutdown(), 0)
        self.assertIn("shout: ignored a line: not json", pack.stderr)

    def test_shutdown_exits_0(self):
        pack = self.start()
        pack.call("upper", {"text": "x"})
        self.assertEqual(pack.shutdown(), 0)

    def test_end_of_input_exits_0(self):
        pack = self.start()
        self.assertEqual(pack.close(), 0)

    def test_a_last_line_without_its_newline_is_still_read(self):
        pack = self.start()
        pack.send(b'{"type":"shutdown"}')
        self.assertEqual(pack.close(), 0)


class ManifestTest(unittest.TestCase):
    def setUp(self):
        with open(os.path.join(HERE, "tasuki-pack.yaml"), encoding="utf-8") as f:
            self.manifest = yaml.safe_load(f)

    def test_the_self_test_passes_with_the_manifests_command(self):
        m = self.manifest
        self.assertEqual(m["command"], ["sh", "{pack_dir}/shout.sh"])
        command = [c.replace("{pack_dir}", HERE) for c in m["command"]]
        with tempfile.TemporaryDirectory() as work, PackProcess(command, cwd=work, env=clean_env({"TASUKI_PACK_DIR": HERE})) as pack:
            pack.ready()
            for test in m["self_test"]:
                self.assertEqual(check_schema(test["with"], m["actions"][test["action"]]["args"]), [])
                answer, _ = pack.call(test["action"], test["with"])
                self.assertEqual(answer["type"], "result", answer)
                self.assertEqual(check_schema(answer["output"], m["actions"][test["action"]]["output"]), [])
            self.assertEqual(pack.shutdown(), 0)

    def test_the_pattern_says_what_the_script_reads(self):
        pattern = re.compile(self.manifest["actions"]["upper"]["args"]["properties"]["text"]["pattern"])
        with PackProcess(["sh", os.path.join(HERE, "shout.sh")], env=clean_env()) as pack:
            pack.ready()
            for text in ("plain", "", "é ✓", "a'b", 'a"b', "a\\b", "a\nb", "a\x1fb", "a\x7fb", "a/b"):
                answer, _ = pack.call("upper", {"text": text})
                self.assertEqual(answer["type"] == "result", bool(pattern.match(text)), (text, answer))


if __name__ == "__main__":
    unittest.main()
