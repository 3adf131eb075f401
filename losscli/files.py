"""Reading files a user names: one reader per kind of content, every failure a UsageError.

A suite TOML, a run directory's CSVs and ``meta.json``, a baseline CSV: whatever is wrong
with the file (missing, a directory, a symlink loop, binary, not UTF-8, too large, rows
that do not parse, a non-numeric cell, a dropped column, broken JSON) ends in one
``UsageError`` naming the file and the problem, never a parser's traceback. Messages quote
at most ``QUOTE`` characters of the offending content.
"""

from __future__ import annotations

import csv
import errno
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from losscli.errors import UsageError

__all__ = ["KINDS", "QUOTE", "clip", "parse_table", "quote", "read_json_object", "read_text"]

QUOTE = 60  # characters of a bad value or line shown in a message

# column kinds a table declares: how a cell is converted and what it may hold
KINDS = ("str", "int", "int?", "float", "finite", "bool", "json")


def clip(text: str, limit: int = QUOTE) -> str:
    """``text`` cut to ``limit`` characters (a hostile spec or name can be megabytes)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quote(value: Any, limit: int = QUOTE) -> str:
    """``repr(value)``, cut to ``limit`` characters (a hostile value can be megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_text(path: Path, what: str, max_bytes: int) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes``.

    Raises:
        UsageError: naming ``what``, the path and why it cannot be read.
    """
    path = Path(path)
    try:
        info = path.stat()
        if path.is_dir():
            raise UsageError(f"{what} {path} is a directory, not a file")
        if not path.is_file():
            raise UsageError(f"{what} {path} is not a regular file")
        if info.st_size > max_bytes:
            raise UsageError(f"{what} {path} is {info.st_size:,} bytes; at most "
                             f"{max_bytes:,} are read")
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{what} not found: {path}") from None
    except OSError as exc:
        reason = "a symlink loop" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise UsageError(f"{what} {path} cannot be read: {reason}") from None
    if b"\0" in data:
        raise UsageError(f"{what} {path} is binary (it holds NUL bytes), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None


def read_json_object(path: Path, what: str, max_bytes: int = 16 << 20) -> dict[str, Any]:
    """A JSON file holding one object (``meta.json``)."""
    text = read_text(path, what, max_bytes)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} {path} must hold a JSON object, got {type(value).__name__}")
    return value


def parse_table(text: str, path: Path, kinds: Mapping[str, str], what: str):
    """A CSV's text as a DataFrame with the declared columns converted to their kinds.

    Every column of ``kinds`` must be present (more are kept, their type inferred); rows
    are numbered from 1 after the header (a quoted cell may span lines). Empty text or a
    header alone is an empty frame with the declared columns.

    Raises:
        UsageError: a row with the wrong number of cells, a missing column, a cell that
            is not of its column's kind; naming the file, the row, the column and the cell.
    """
    import pandas as pd

    header, body = _records(text, path, what)
    if header is None:
        return pd.DataFrame({c: pd.Series(dtype=_dtype(k)) for c, k in kinds.items()})
    missing = [c for c in kinds if c not in header]
    if missing:
        raise UsageError(f"{what} {path} lacks the columns {', '.join(missing)} (is it a "
                         f"{what} of this losscli version?)")
    raw = pd.DataFrame(body, columns=header, dtype=str)
    columns = {c: _convert(raw[c], kinds.get(c, "infer"), path, c, what) for c in header}
    return pd.DataFrame(columns, index=raw.index)


def _records(text: str, path: Path, what: str) -> tuple[list[str] | None, list[list[str]]]:
    """The header and the data rows (blank lines skipped), each as long as the header."""
    reader = csv.reader(io.StringIO(text), strict=True)
    try:
        records = [r for r in reader if r]
    except csv.Error as exc:
        raise UsageError(f"{what} {path} does not parse as CSV (line {reader.line_num}): "
                         f"{exc}") from None
    if not records:
        return None, []
    header, body = records[0], records[1:]
    if len(set(header)) != len(header) or not all(h.strip() for h in header):
        raise UsageError(f"{what} {path}: its header {quote(','.join(header))} has empty or "
                         "repeated column names")
    for i, row in enumerate(body, 1):
        if len(row) != len(header):
            raise UsageError(f"{what} {path} row {i} has {len(row)} cells, the header "
                             f"{len(header)}: {quote(','.join(row))}")
    return header, body


def _rows(mask) -> str:
    """``3`` or ``3, 7, 9`` (1-based data rows where ``mask`` holds; at most five)."""
    rows = [str(i + 1) for i in mask.to_numpy().nonzero()[0]]
    return ", ".join(rows[:5]) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")


def _dtype(kind: str) -> str:
    return {"int": "int64", "float": "float64", "finite": "float64", "int?": "float64",
            "bool": "bool"}.get(kind, "object")


_TRUE, _FALSE = {"true", "1"}, {"false", "0"}
_RULE = {"int": "an integer", "int?": "an integer or empty", "float": "a number or empty",
         "finite": "a finite number", "bool": "true or false"}


def _convert(col, kind: str, path: Path, name: str, what: str):
    """One column of text cells as ``kind``; a bad cell is a UsageError."""
    import numpy as np
    import pandas as pd

    if kind == "str":
        return col
    if kind == "json":
        return _json_column(col, path, name, what)
    text = col.str.strip()
    if kind == "bool":
        low = text.str.lower()
        _refuse(col, ~low.isin(_TRUE | _FALSE), path, name, what, _RULE[kind])
        return low.isin(_TRUE)
    number = pd.to_numeric(text, errors="coerce").astype("float64")
    allowed = (text == "") if kind in ("float", "int?") else text != text
    if kind in ("float", "infer"):
        allowed |= text.str.lower().isin({"nan", "+nan", "-nan", ""})
    bad = number.isna() & ~allowed
    if kind == "infer":
        return col if bad.any() else number
    if kind in ("int", "int?"):
        bad |= number.notna() & ((number % 1 != 0) | (number.abs() >= 2.0 ** 63))
    if kind == "finite":
        bad |= ~np.isfinite(number)
    _refuse(col, bad, path, name, what, _RULE[kind])
    return number.astype("int64") if kind == "int" else number


def _json_column(col, path: Path, name: str, what: str):
    for i, cell in enumerate(col):
        try:
            ok = isinstance(json.loads(cell), dict)
        except ValueError:
            ok = False
        if not ok:
            raise UsageError(f"{what} {path} row {i + 1}, column {name}: {quote(cell)} is "
                             "not a JSON object")
    return col


def _refuse(col, bad, path: Path, name: str, what: str, rule: str) -> None:
    if not bad.any():
        return
    first = col[bad].iloc[0]
    raise UsageError(f"{what} {path} row {_rows(bad)}, column {name}: {quote(first)} is not "
                     f"{rule}")

