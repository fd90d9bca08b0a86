# pyright: basic
"""Safe outputs: CSV that spreadsheets cannot misread, and output files that are only ever regular
files the user meant to (over)write.

- Cells holding a carriage return or a line feed are quoted (Python's csv module quotes only the
  characters of its line terminator, so a bare CR would split a row in many readers).
- Text cells starting with ``=``, ``+``, ``-``, ``@``, a tab or a CR are prefixed with ``'`` so a
  spreadsheet shows them as text instead of running them as formulas (OWASP "CSV injection").
  Numbers are written as numbers.
- Rows end with ``\\n``.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """A text cell made inert for spreadsheets; other values unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


class SafeCsvWriter:
    """Like :class:`csv.DictWriter` (``extrasaction="ignore"``), with the rules of the module docstring."""

    def __init__(self, stream: IO[str], fieldnames: list[str], flush: bool = False) -> None:
        self.stream, self.fieldnames, self.flush = stream, list(fieldnames), flush

    def _line(self, values: Iterable[Any]) -> str:
        buf = io.StringIO()
        # "\r\n" as the terminator makes the csv module quote any cell holding CR or LF
        csv.writer(buf, lineterminator="\r\n").writerow([safe_cell(v) for v in values])
        return buf.getvalue()[:-2] + "\n"

    def _write(self, text: str) -> None:
        self.stream.write(text)
        if self.flush:
            self.stream.flush()

    def writeheader(self) -> None:
        self._write(self._line(self.fieldnames))

    def writerow(self, row: dict[str, Any]) -> None:
        self._write(self._line(row.get(k) for k in self.fieldnames))


def csv_text(rows: Iterable[dict[str, Any]], fieldnames: list[str]) -> str:
    """Header and rows as one CSV string."""
    buf = io.StringIO()
    w = SafeCsvWriter(buf, fieldnames)
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def write_output_file(path: str | os.PathLike, text: str, force: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically after :func:`edgekit.safefile.check_output_target`
    (no symlink, FIFO, device or folder; an existing file only with ``force``)."""
    from edgekit.errors import EdgekitError
    from edgekit.manifest import atomic_write_text
    from edgekit.safefile import check_output_target

    path = check_output_target(path, force)
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise EdgekitError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def control_character(value: str) -> str | None:
    """The first character of ``value`` that breaks a one-line display (control, format, line or
    paragraph separator: a newline, an escape, a right-to-left override), else None."""
    import unicodedata

    return next((c for c in value if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)


def display_text(value: str) -> str:
    """A file name or id for a one-line table or message: control characters shown escaped."""
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)


def write_stdout(text: str) -> None:
    """Write a whole result to stdout, every byte or an OSError. A pipe whose reader leaves mid-write
    (``| head -1``) makes the kernel return a short count, which Python's buffered writer passes on as
    success and drops the rest: the remainder is written again, so the real error (EPIPE) is raised."""
    stream = sys.stdout
    raw = getattr(stream, "buffer", None)
    if raw is None:  # a text-only stream (a test's StringIO): nothing short to see
        stream.write(text)
        stream.flush()
        return
    stream.flush()
    view = memoryview(text.encode(stream.encoding or "utf-8", stream.errors or "strict"))
    while view:
        n = raw.write(view)
        if not n:
            raise OSError(errno.EIO, "output took no bytes")
        view = view[n:]
    raw.flush()
