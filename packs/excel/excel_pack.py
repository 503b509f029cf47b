"""The `excel` action pack: read and write Excel workbooks (.xlsx, .xlsm)
with openpyxl, and read CSV files into the same rows, so that a workflow can
go from CSV to a workbook. tasuki-pack.yaml describes the actions.

Cells travel as JSON: text, numbers, true/false and null (an empty cell).
Dates and times read as ISO 8601 text, durations as seconds. Text is always
written as text, even text that starts with `=` or looks like an error code
(`#N/A`): data from a CSV file or a web page must not become a formula.

A formula cell reads as the value the program that last calculated the
workbook stored with it (Excel, LibreOffice). openpyxl cannot calculate, and
a workbook it saves holds no such values: once this pack has written a
workbook, its formula cells read as null until a spreadsheet program
recalculates and saves it.
"""

import csv
import datetime
import hashlib
import io
import math
import os
import re
import stat
from collections import OrderedDict

import openpyxl
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

from tasuki_pack import ActionFailed, Pack

pack = Pack()

READABLE = (".xlsx", ".xlsm", ".xltx", ".xltm")  # what openpyxl opens
CACHE_SIZE = 8  # open workbooks kept between steps; parsed workbooks are big
MAX_TEXT = 32767  # characters in one cell, Excel's limit
SHEET_NAME = re.compile(r"[^\[\]:*?/\\]{1,31}\Z")
JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?\Z")


class Book:
    """An open workbook and the bytes of the file it was read from (or saved
    to). The digest of those bytes says whether the file still holds this
    workbook: a file's modification time can be too coarse (FAT, SMB) to
    notice a quick rewrite of the same size, and reading a file is cheap
    beside parsing it."""

    def __init__(self, path, wb, data):
        self.path = path
        self.wb = wb
        self.data = data
        self.digest = hashlib.sha256(data).hexdigest() if data is not None else None
        self.values = None  # the same file read for stored formula values, when first needed


# --- files and the cache -------------------------------------------------------


def _resolve(ctx, given):
    """A relative path is relative to the session's work directory."""
    return os.path.abspath(os.path.join(ctx.work_dir, given))


def _cache(ctx):
    """Workbooks opened by earlier steps, most recently used last. It lives
    in ctx.state, which lasts as long as the pack's process: the session."""
    return ctx.state.setdefault("workbooks", OrderedDict())


def _remember(ctx, book):
    cache = _cache(ctx)
    cache[book.path] = book
    cache.move_to_end(book.path)
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)


def _read_file(path, given, mode="rb", **kwargs):
    try:
        with open(path, mode, **kwargs) as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        where = "" if given == path else f" (`{given}`, relative to the work directory)"
        raise ActionFailed("file_not_found", f"no file {path}{where}") from None
    except IsADirectoryError:
        raise ActionFailed("file_not_found", f"{path} is a folder, not a file") from None
    except PermissionError:
        raise ActionFailed("permission_denied", f"cannot read {path}: permission denied") from None


def _load(path, data, values=False):
    """Parse a workbook. With values=True, formula cells hold their stored
    values rather than their formulas. Macros of an .xlsm are kept, so that
    saving it does not drop them (.xlsm, .xltm)."""
    try:
        return openpyxl.load_workbook(
            io.BytesIO(data), data_only=values, keep_vba=path.lower().endswith((".xlsm", ".xltm")) and not values
        )
    except Exception as e:  # a parse of bytes: any failure means "not a workbook we can read"
        raise ActionFailed("bad_workbook", f"{path} is not a workbook openpyxl can read ({type(e).__name__}: {e})") from None


def _check_extension(path):
    if not path.lower().endswith(READABLE):
        raise ActionFailed(
            "bad_workbook", f"{path}: a workbook's name ends in {', '.join(READABLE)} (.xls and .csv are not workbooks here)"
        )


def _open(ctx, given, create=False):
    """The workbook at `given`, from the cache if the file still holds it.
    With create=True a missing file gives a new, unsaved workbook."""
    path = _resolve(ctx, given)
    _check_extension(path)
    cache = _cache(ctx)
    if create and not os.path.exists(path):
        cache.pop(path, None)
        if not path.lower().endswith(".xlsx"):
            raise ActionFailed("bad_workbook", f"no file {path}: a new workbook is an .xlsx (openpyxl cannot make macros or templates)")
        wb = openpyxl.Workbook()
        wb.active.title = "Sheet1"  # Excel's name, not openpyxl's "Sheet"
        return Book(path, wb, None)
    try:
        data = _read_file(path, given)
    except ActionFailed:
        cache.pop(path, None)
        raise
    book = cache.get(path)
    if book is not None and book.digest == hashlib.sha256(data).hexdigest():
        ctx.log("debug", f"{path}: reusing the workbook an earlier step opened")
        cache.move_to_end(path)
        return book
    if book is not None:
        ctx.log("debug", f"{path}: changed since an earlier step opened it; reading it again")
    book = Book(path, _load(path, data), data)
    _remember(ctx, book)
    return book


def _save(ctx, book):
    """Save at once, so that later steps and other programs see the change.
    The file is written under a temporary name and renamed over the old one:
    a reader never sees half a workbook, and a failed save leaves the old
    file whole."""
    if book.path.lower().endswith((".xltx", ".xltm")):
        book.wb.template = True
    buffer = io.BytesIO()
    book.wb.save(buffer)
    data = buffer.getvalue()
    directory, name = os.path.split(book.path)
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(temporary, "wb") as f:
            f.write(data)
        try:
            os.chmod(temporary, stat.S_IMODE(os.stat(book.path).st_mode))
        except FileNotFoundError:
            pass
        os.replace(temporary, book.path)
    except PermissionError:
        raise ActionFailed("permission_denied", f"cannot write {book.path}: permission denied") from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    book.data = data
    book.digest = hashlib.sha256(data).hexdigest()
    book.values = None  # the saved file holds no formula values (see the module's docstring)
    _remember(ctx, book)


def _changing(ctx, book, change):
    """Run change(book.wb), then save. If either fails, the cached workbook
    may hold a change the file does not: it is dropped from the cache."""
    try:
        result = change(book.wb)
        _save(ctx, book)
        return result
    except BaseException:
        _cache(ctx).pop(book.path, None)
        raise


def _sheet(book, name):
    if name is None:
        return book.wb.active
    if name not in book.wb.sheetnames:
        raise ActionFailed(
            "sheet_not_found", f"no sheet `{name}` in {book.path}; it has: {', '.join(book.wb.sheetnames)}"
        )
    return book.wb[name]


# --- cells ---------------------------------------------------------------------


def _extent(ws):
    """(last row, last column) holding a value; (0, 0) for an empty sheet.
    ws.max_row would count rows that are only formatted, and iterating the
    sheet would create every empty cell, so the cell map is read directly."""
    rows = columns = 0
    for (row, column), cell in ws._cells.items():
        if cell._value is not None:
            rows = max(rows, row)
            columns = max(columns, column)
    return rows, columns


def _json(value):
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return str(value)


def _rows(book, ws):
    """The sheet's values, a list per row, from A1 to the last cell holding
    a value (so every row has the same length)."""
    last_row, last_column = _extent(ws)
    if last_row == 0:
        return []
    stored = None
    rows = []
    for cells in ws.iter_rows(min_row=1, max_row=last_row, max_col=last_column):
        row = []
        for cell in cells:
            value = cell.value
            if cell.data_type == "f":
                if stored is None:
                    if book.values is None:
                        book.values = _load(book.path, book.data, values=True)
                    stored = book.values[ws.title]
                value = stored.cell(row=cell.row, column=cell.column).value
            row.append(_json(value))
        rows.append(row)
    return rows


def _keyed(rows):
    """Rows as objects keyed by the first row. A blank heading becomes
    `column_<n>` and a repeated one `<name>_2`, `<name>_3`..., so no value is
    lost; a row shorter than the widest has null for what it lacks."""
    if not rows:
        return []
    width = max(len(row) for row in rows)
    names, seen = [], set()
    for i in range(width):
        heading = rows[0][i] if i < len(rows[0]) else None
        if isinstance(heading, bool):
            name = "true" if heading else "false"
        else:
            name = "" if heading is None else str(_json(heading))
        name = name if name.strip() else f"column_{i + 1}"
        base, n = name, 1
        while name in seen:
            n += 1
            name = f"{base}_{n}"
        seen.add(name)
        names.append(name)
    return [{name: (row[i] if i < len(row) else None) for i, name in enumerate(names)} for row in rows[1:]]


def _check_rows(rows):
    """Refuse, before anything is changed, what a cell cannot hold."""
    for r, row in enumerate(rows):
        if not isinstance(row, list):
            raise ActionFailed("bad_args", f"rows[{r}] is not a list of cells")
        _check_cells(row, f"rows[{r}]")


def _check_cells(row, what):
    for c, value in enumerate(row):
        where = f"{what}[{c}]"
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise ActionFailed("bad_value", f"{where}: a cell holds text, a number, true/false or null, not {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ActionFailed("bad_value", f"{where}: {value} is not a number a cell can hold")
        if isinstance(value, str) and ILLEGAL_CHARACTERS_RE.search(value):
            raise ActionFailed("bad_value", f"{where}: a control character that a workbook cannot hold")
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise ActionFailed("bad_value", f"{where}: {len(value)} characters; a cell holds at most {MAX_TEXT}")


def _check_sheet_name(name):
    if name is not None and (not SHEET_NAME.match(name) or name.startswith("'") or name.endswith("'")):
        raise ActionFailed(
            "bad_args", f"sheet name `{name}`: 1 to 31 characters, without [ ] : * ? / \\ and not starting or ending with '"
        )


def _put(ws, row_number, values):
    for column, value in enumerate(values, 1):
        if value is None:
            continue
        cell = ws.cell(row=row_number, column=column, value=value)
        if isinstance(value, str):
            cell.data_type = "s"  # openpyxl would make `=...` a formula and `#N/A` an error


def _sheet_for_writing(book, name):
    """The sheet to write: the named one, made if missing; else the active one."""
    if book.data is None:  # a new workbook
        ws = book.wb.active
        ws.title = name or ws.title
        return ws
    if name is None:
        return book.wb.active
    if name in book.wb.sheetnames:
        return book.wb[name]
    return book.wb.create_sheet(name)


# --- actions -------------------------------------------------------------------


@pack.action("read_sheet")
def read_sheet(ctx, path, sheet=None, header=False):
    book = _open(ctx, path)
    ws = _sheet(book, sheet)
    rows = _rows(book, ws)
    if header:
        rows = _keyed(rows)
    ctx.log("info", f"read {len(rows)} rows from sheet `{ws.title}` of {book.path}")
    return {"rows": rows, "sheet": ws.title, "count": len(rows)}


@pack.action("write_rows")
def write_rows(ctx, path, rows, sheet=None, header=None):
    _check_sheet_name(sheet)
    _check_rows(rows)
    if header is not None and not all(isinstance(h, str) for h in header):
        raise ActionFailed("bad_args", "header is a list of strings")
    _check_cells(header or [], "header")
    book = _open(ctx, path, create=True)

    def change(wb):
        if book.data is None or (sheet is not None and sheet not in wb.sheetnames):
            ws = _sheet_for_writing(book, sheet)
        else:
            # Replace the sheet: same name, same place among the tabs, still
            # active if it was; nothing of the old content is left.
            old = _sheet(book, sheet)
            index, was_active = wb.index(old), wb.active is old
            wb.remove(old)
            ws = wb.create_sheet(old.title, index)
            if was_active:
                wb.active = index
        first = 1
        if header:
            _put(ws, 1, header)
            first = 2
        for i, row in enumerate(rows):
            _put(ws, first + i, row)
        return ws.title

    title = _changing(ctx, book, change)
    ctx.log("info", f"wrote {len(rows)} rows to sheet `{title}` of {book.path}")
    return {"path": book.path, "sheet": title, "count": len(rows)}


@pack.action("append_rows")
def append_rows(ctx, path, rows, sheet=None):
    _check_sheet_name(sheet)
    _check_rows(rows)
    book = _open(ctx, path, create=True)

    def change(wb):
        ws = _sheet_for_writing(book, sheet)
        last, _ = _extent(ws)
        for i, row in enumerate(rows):
            _put(ws, last + 1 + i, row)
        return ws.title, _extent(ws)[0]

    title, total = _changing(ctx, book, change)
    ctx.log("info", f"appended {len(rows)} rows to sheet `{title}` of {book.path}; it has {total} now")
    return {"path": book.path, "sheet": title, "count": len(rows), "total": total}


@pack.action("read_csv")
def read_csv(ctx, path, delimiter=",", header=False, encoding="utf-8-sig", numbers=False):
    if len(delimiter) != 1:
        raise ActionFailed("bad_args", f"delimiter {delimiter!r}: one character")
    full = _resolve(ctx, path)
    try:
        text = _read_file(full, path, "r", encoding=encoding, newline="")
    except LookupError:
        raise ActionFailed("bad_args", f"unknown encoding `{encoding}`") from None
    except UnicodeDecodeError as e:
        raise ActionFailed("bad_csv", f"{full} is not {encoding} text (byte {e.start}); say which `encoding` it is in") from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = [row for row in reader if row]  # a blank line is no record
    except csv.Error as e:
        raise ActionFailed("bad_csv", f"{full}, line {reader.line_num}: {e}") from None
    if numbers:
        rows = [[_number(field) for field in row] for row in rows]
    if header:
        rows = _keyed(rows)
    ctx.log("info", f"read {len(rows)} rows from {full}")
    return {"rows": rows, "count": len(rows)}


def _number(field):
    """A field written exactly as a JSON number becomes one. `007`, `+1`,
    ` 1` and `1,5` stay text (an id, a phone number, a local decimal comma),
    and so do integers a spreadsheet cannot hold exactly (over 2**53)."""
    if not JSON_NUMBER.match(field):
        return field
    if re.fullmatch(r"-?[0-9]+", field):
        value = int(field)
        return value if abs(value) <= 2**53 else field
    value = float(field)
    return value if math.isfinite(value) else field


@pack.on_shutdown
def close_workbooks():
    pack.state.pop("workbooks", None)


if __name__ == "__main__":
    pack.serve()
