"""Tests of the excel pack: excel_pack.py runs as a real child process and is
spoken to over the protocol (docs/action-packs.md), as a robot would.

Run from the repository root: python3 -m unittest discover -s packs/excel -v
openpyxl must be installed (python3 -m pip install openpyxl): without it
these tests fail, they are not skipped.
"""

import csv
import os
import sys
import tempfile
import unittest
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
HELPER = os.path.normpath(os.path.join(HERE, "..", "python"))
sys.path.insert(0, HELPER)

import openpyxl  # noqa: E402  (an ImportError here fails the run loudly)
from tasuki_pack_testing import PackProcess, check_schema, clean_env  # noqa: E402

import yaml  # noqa: E402  (reads the manifest; missing, the run fails loudly)

MANIFEST = os.path.join(HERE, "tasuki-pack.yaml")


def manifest():
    with open(MANIFEST, encoding="utf-8") as f:
        return yaml.safe_load(f)


class ExcelPackTest(unittest.TestCase):
    def setUp(self):
        work = tempfile.TemporaryDirectory()
        self.addCleanup(work.cleanup)
        self.work = work.name
        self.schemas = manifest()["actions"]

    def start(self, cwd=None):
        """The pack as the manifest starts it; sys.executable rather than the
        `python3` on PATH so that it is the Python openpyxl is installed for."""
        pack = PackProcess(
            [sys.executable, os.path.join(HERE, "excel_pack.py")],
            cwd=cwd or self.work,
            env=clean_env({"PYTHONPATH": os.path.join(HERE, "..", "python")}),
        )
        self.addCleanup(pack.__exit__)
        pack.ready()
        return pack

    def call(self, pack, action, args, **kwargs):
        """Run an action; a result's output must match the manifest's schema
        (or the robot would fail the step with pack_bad_output)."""
        answer, events = pack.call(action, args, **kwargs)
        if answer["type"] == "result" and self.schemas is not None:
            self.assertEqual(check_schema(answer["output"], self.schemas[action]["output"]), [])
        return answer, events

    def ok(self, pack, action, args, **kwargs):
        answer, _ = self.call(pack, action, args, **kwargs)
        self.assertEqual(answer["type"], "result", answer)
        return answer["output"]

    def fails(self, pack, action, args, code):
        answer, _ = self.call(pack, action, args)
        self.assertEqual((answer["type"], answer["code"]), ("error", code), answer)
        return answer["message"]

    def path(self, name):
        return os.path.join(self.work, name)

    def test_write_then_read_back_keeps_types(self):
        pack = self.start()
        row = [1, 2.5, "three", True, None, "=1+1", "#N/A", "007", "héllo ✓", -12345678901]
        out = self.ok(pack, "write_rows", {"path": "out.xlsx", "rows": [row, ["x"]]})
        self.assertEqual(out, {"path": self.path("out.xlsx"), "sheet": "Sheet1", "count": 2})
        out = self.ok(pack, "read_sheet", {"path": "out.xlsx"})
        self.assertEqual(out, {"rows": [row, ["x"] + [None] * 9], "sheet": "Sheet1", "count": 2})
        # Saved at once, and text stays text for other programs too.
        ws = openpyxl.load_workbook(self.path("out.xlsx")).active
        self.assertEqual([ws["A1"].value, ws["F1"].value, ws["F1"].data_type, ws["G1"].data_type], [1, "=1+1", "s", "s"])
        self.assertEqual(pack.shutdown(), 0)

    def test_write_replaces_one_sheet_and_keeps_the_others(self):
        pack = self.start()
        self.ok(pack, "write_rows", {"path": "book.xlsx", "sheet": "A", "rows": [[1], [2], [3]]})
        self.ok(pack, "write_rows", {"path": "book.xlsx", "sheet": "B", "rows": [["b"]]})
        self.ok(pack, "write_rows", {"path": "book.xlsx", "sheet": "A", "rows": [[9]]})
        self.assertEqual(self.ok(pack, "read_sheet", {"path": "book.xlsx", "sheet": "A"})["rows"], [[9]])
        self.assertEqual(self.ok(pack, "read_sheet", {"path": "book.xlsx", "sheet": "B"})["rows"], [["b"]])
        wb = openpyxl.load_workbook(self.path("book.xlsx"))
        self.assertEqual(wb.sheetnames, ["A", "B"])
        self.assertEqual(wb.active.title, "A")
        # Without `sheet`, the active sheet is the one replaced.
        self.ok(pack, "write_rows", {"path": "book.xlsx", "rows": [[10]]})
        self.assertEqual(self.ok(pack, "read_sheet", {"path": "book.xlsx"}), {"rows": [[10]], "sheet": "A", "count": 1})

    def test_append_creates_then_appends(self):
        pack = self.start()
        out = self.ok(pack, "append_rows", {"path": "log.xlsx", "rows": [["a", 1], ["b", 2]]})
        self.assertEqual(out, {"path": self.path("log.xlsx"), "sheet": "Sheet1", "count": 2, "total": 2})
        out = self.ok(pack, "append_rows", {"path": "log.xlsx", "rows": [["c", 3]]})
        self.assertEqual((out["count"], out["total"]), (1, 3))
        out = self.ok(pack, "append_rows", {"path": "log.xlsx", "sheet": "Other", "rows": [[True]]})
        self.assertEqual((out["sheet"], out["total"]), ("Other", 1))
        self.assertEqual(
            self.ok(pack, "read_sheet", {"path": "log.xlsx"})["rows"], [["a", 1], ["b", 2], ["c", 3]]
        )
        self.assertEqual(openpyxl.load_workbook(self.path("log.xlsx")).sheetnames, ["Sheet1", "Other"])

    def test_header_mode(self):
        pack = self.start()
        out = self.ok(
            pack,
            "write_rows",
            {"path": "h.xlsx", "header": ["name", "amount", "", "name"], "rows": [["a", 1, "x", "y"], ["b", None]]},
        )
        self.assertEqual(out["count"], 2)
        out = self.ok(pack, "read_sheet", {"path": "h.xlsx", "header": True})
        self.assertEqual(
            out["rows"],
            [
                {"name": "a", "amount": 1, "column_3": "x", "name_2": "y"},
                {"name": "b", "amount": None, "column_3": None, "name_2": None},
            ],
        )
        self.assertEqual(out["count"], 2)
        self.assertEqual(self.ok(pack, "read_sheet", {"path": "h.xlsx"})["count"], 3)
        # An empty sheet has no rows either way.
        self.ok(pack, "write_rows", {"path": "h.xlsx", "rows": []})
        self.assertEqual(self.ok(pack, "read_sheet", {"path": "h.xlsx", "header": True})["rows"], [])

    def test_csv_reads_into_rows_and_goes_to_a_workbook(self):
        with open(self.path("in.csv"), "w", encoding="utf-8-sig", newline="") as f:
            csv.writer(f).writerows([["id", "name", "amount"], ["007", "a, b", "1.5"], [], ["8", "line\nbreak", "-3"]])
        pack = self.start()
        out = self.ok(pack, "read_csv", {"path": "in.csv"})
        rows = [["id", "name", "amount"], ["007", "a, b", "1.5"], ["8", "line\nbreak", "-3"]]
        self.assertEqual(out, {"rows": rows, "count": 3})
        out = self.ok(pack, "read_csv", {"path": "in.csv", "header": True, "numbers": True})
        self.assertEqual(
            out["rows"],
            [{"id": "007", "name": "a, b", "amount": 1.5}, {"id": 8, "name": "line\nbreak", "amount": -3}],
        )
        # CSV to workbook: the rows read are the rows written.
        self.ok(pack, "write_rows", {"path": "from-csv.xlsx", "rows": rows})
        self.assertEqual(self.ok(pack, "read_sheet", {"path": "from-csv.xlsx"})["rows"], rows)

        with open(self.path("semi.csv"), "w", encoding="cp1252", newline="") as f:
            f.write("name;price\r\ncafé;1,5\r\n")
        out = self.ok(pack, "read_csv", {"path": "semi.csv", "delimiter": ";", "encoding": "cp1252", "numbers": True})
        self.assertEqual(out["rows"], [["name", "price"], ["café", "1,5"]])
        message = self.fails(pack, "read_csv", {"path": "semi.csv"}, "bad_csv")
        self.assertIn("encoding", message)
        self.fails(pack, "read_csv", {"path": "in.csv", "delimiter": ";;"}, "bad_args")

    def test_a_missing_file_is_named(self):
        pack = self.start()
        message = self.fails(pack, "read_sheet", {"path": "nope.xlsx"}, "file_not_found")
        self.assertIn(self.path("nope.xlsx"), message)
        message = self.fails(pack, "read_csv", {"path": "sub/nope.csv"}, "file_not_found")
        self.assertIn(self.path("sub/nope.csv"), message)

    def test_a_missing_sheet_is_named_with_the_sheets_there_are(self):
        pack = self.start()
        self.ok(pack, "write_rows", {"path": "s.xlsx", "sheet": "Data", "rows": [[1]]})
        self.ok(pack, "append_rows", {"path": "s.xlsx", "sheet": "Notes", "rows": [[2]]})
        message = self.fails(pack, "read_sheet", {"path": "s.xlsx", "sheet": "Q3"}, "sheet_not_found")
        self.assertIn("`Q3`", message)
        self.assertIn(self.path("s.xlsx"), message)
        self.assertIn("Data, Notes", message)

    def test_the_cache_is_reused_but_never_stale(self):
        pack = self.start()
        self.ok(pack, "write_rows", {"path": "c.xlsx", "rows": [["aaaa"]]})
        # A read after the pack's own write reuses the workbook, and sees the write.
        answer, events = self.call(pack, "read_sheet", {"path": "c.xlsx"})
        self.assertEqual(answer["output"]["rows"], [["aaaa"]])
        self.assertTrue(any("reusing" in e.get("message", "") for e in events), events)

        # Another program rewrites the file, keeping its size and time.
        before = os.stat(self.path("c.xlsx"))
        wb = openpyxl.load_workbook(self.path("c.xlsx"))
        wb.active["A1"] = "bbbb"
        wb.save(self.path("c.xlsx"))
        os.utime(self.path("c.xlsx"), ns=(before.st_atime_ns, before.st_mtime_ns))
        answer, events = self.call(pack, "read_sheet", {"path": "c.xlsx"})
        self.assertEqual(answer["output"]["rows"], [["bbbb"]])
        self.assertTrue(any("changed" in e.get("message", "") for e in events), events)

        # Another session's pack process appends; this one then appends too:
        # nothing of the other's write is lost.
        other = self.start()
        self.ok(other, "append_rows", {"path": "c.xlsx", "rows": [["from the other"]]})
        self.assertEqual(other.shutdown(), 0)
        out = self.ok(pack, "append_rows", {"path": "c.xlsx", "rows": [["from this one"]]})
        self.assertEqual(out["total"], 3)
        self.assertEqual(
            self.ok(pack, "read_sheet", {"path": "c.xlsx"})["rows"], [["bbbb"], ["from the other"], ["from this one"]]
        )

        # A deleted file is not served from the cache.
        os.remove(self.path("c.xlsx"))
        self.fails(pack, "read_sheet", {"path": "c.xlsx"}, "file_not_found")

    def test_a_refused_write_leaves_file_and_cache_as_they_were(self):
        pack = self.start()
        self.ok(pack, "write_rows", {"path": "w.xlsx", "rows": [[1]]})
        self.fails(pack, "write_rows", {"path": "w.xlsx", "rows": [[2], [{"an": "object"}]]}, "bad_value")
        self.fails(pack, "append_rows", {"path": "w.xlsx", "rows": [["bell \u0007"]]}, "bad_value")
        self.fails(pack, "write_rows", {"path": "w.xlsx", "sheet": "a/b", "rows": [[2]]}, "bad_args")
        self.assertEqual(self.ok(pack, "read_sheet", {"path": "w.xlsx"})["rows"], [[1]])

    def test_what_is_not_a_workbook_is_said_so(self):
        pack = self.start()
        with open(self.path("in.csv"), "w") as f:
            f.write("a,b\n")
        with open(self.path("broken.xlsx"), "wb") as f:
            f.write(b"not a zip")
        self.fails(pack, "read_sheet", {"path": "in.csv"}, "bad_workbook")
        self.assertIn("broken.xlsx", self.fails(pack, "read_sheet", {"path": "broken.xlsx"}, "bad_workbook"))
        self.fails(pack, "write_rows", {"path": "new.xlsm", "rows": [[1]]}, "bad_workbook")

    def test_formula_cells_read_as_their_stored_values(self):
        wb = openpyxl.Workbook()
        wb.active.append([1])
        wb.active.append([2])
        wb.active["A3"] = "=SUM(A1:A2)"
        wb.save(self.path("f.xlsx"))
        # Store a value with the formula, as Excel would have.
        with zipfile.ZipFile(self.path("f.xlsx")) as z:
            parts = {name: z.read(name) for name in z.namelist()}
        sheet = "xl/worksheets/sheet1.xml"
        parts[sheet] = parts[sheet].replace(b"<f>SUM(A1:A2)</f><v />", b"<f>SUM(A1:A2)</f><v>3</v>")
        self.assertIn(b"<v>3</v>", parts[sheet])
        with zipfile.ZipFile(self.path("f.xlsx"), "w") as z:
            for name, data in parts.items():
                z.writestr(name, data)
        pack = self.start()
        self.assertEqual(self.ok(pack, "read_sheet", {"path": "f.xlsx"})["rows"], [[1], [2], [3]])
        # After openpyxl saved it, no value is stored (the pack's docs say so)...
        self.ok(pack, "append_rows", {"path": "f.xlsx", "rows": [[4]]})
        self.assertEqual(self.ok(pack, "read_sheet", {"path": "f.xlsx"})["rows"], [[1], [2], [None], [4]])
        # ...but the formula is kept.
        self.assertEqual(openpyxl.load_workbook(self.path("f.xlsx")).active["A3"].value, "=SUM(A1:A2)")

    def test_relative_paths_are_relative_to_the_work_directory(self):
        elsewhere = tempfile.TemporaryDirectory()
        self.addCleanup(elsewhere.cleanup)
        pack = self.start(cwd=elsewhere.name)
        out = self.ok(pack, "write_rows", {"path": "sub/rel.xlsx", "rows": [[1]]}, context={"work_dir": self.work})
        self.assertEqual(out["path"], self.path("sub/rel.xlsx"))
        self.assertTrue(os.path.exists(self.path("sub/rel.xlsx")))
        self.assertFalse(os.path.exists(os.path.join(elsewhere.name, "sub")))


class ManifestTest(unittest.TestCase):
    def test_the_manifest_is_as_the_page_asks(self):
        m = manifest()
        self.assertEqual((m["manifest"], m["name"]), (1, "excel"))
        self.assertEqual(m["command"], ["python3", "{pack_dir}/excel_pack.py"])
        self.assertEqual(m["env"], {"PYTHONPATH": "{pack_dir}/../python"})
        self.assertEqual(sorted(m["actions"]), ["append_rows", "read_csv", "read_sheet", "write_rows"])
        for name, spec in m["actions"].items():
            self.assertEqual(spec["args"]["type"], "object", name)
            self.assertIs(spec["args"]["additionalProperties"], False, name)
            self.assertIn("output", spec, name)
            for test in m.get("self_test", []):
                if test["action"] == name:
                    self.assertEqual(check_schema(test["with"], spec["args"]), [], test)

    def test_the_self_test_passes_with_the_manifests_command(self):
        """What `tasuki packs check` does: the manifest's command (python3 from
        PATH), its env with {pack_dir} expanded, a scratch work directory."""
        m = manifest()
        expand = lambda s: s.replace("{pack_dir}", HERE)  # noqa: E731
        env = clean_env({k: expand(v) for k, v in m["env"].items()})
        env["TASUKI_PACK_DIR"] = HERE
        with tempfile.TemporaryDirectory() as work, PackProcess([expand(c) for c in m["command"]], cwd=work, env=env) as pack:
            pack.ready()
            answers = [pack.call(t["action"], t["with"])[0] for t in m["self_test"]]
            for test, answer in zip(m["self_test"], answers):
                self.assertEqual(answer["type"], "result", answer)
                self.assertEqual(check_schema(answer["output"], m["actions"][test["action"]]["output"]), [])
            self.assertEqual(answers[-1]["output"]["rows"], [{"name": "widget", "amount": 2}, {"name": "gadget", "amount": 3.5}])
            # The actions the pack serves are the manifest's.
            answer, _ = pack.call("no_such_action")
            self.assertIn("it has: " + ", ".join(sorted(m["actions"])), answer["message"])
            self.assertEqual(pack.shutdown(), 0)


if __name__ == "__main__":
    unittest.main()
