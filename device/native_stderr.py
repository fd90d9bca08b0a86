# pyright: basic
"""File descriptor 2 borrowed from native code, without losing the program's own lines.

Decoders and LiteRT write warnings straight to descriptor 2, so to read (or drop) them it is pointed
at a scratch file for a moment. Descriptor 2 is process-wide: while a decoding thread has it, a line
the main thread prints ("rejected FIELD: out of focus") would land in the scratch file and be lost,
and two borrowers in different threads could leave it pointing at a scratch file for good. So every
borrow holds one lock, and Python's own ``sys.stderr`` writes wait for it
(:func:`serialise_python_stderr`): they go to the terminal before or after a borrow, never into it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import IO, Any

STDERR_LOCK = threading.RLock()  # re-entrant: a borrower's own Python warning writes under it


class _SerialisedStream:
    """``sys.stderr`` whose writes wait while descriptor 2 is borrowed; everything else passes through."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        with STDERR_LOCK:
            return self._stream.write(text)

    def writelines(self, lines: Any) -> None:
        with STDERR_LOCK:
            self._stream.writelines(lines)

    def flush(self) -> None:
        with STDERR_LOCK:
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def serialise_python_stderr() -> None:
    """Make Python's ``sys.stderr`` wait for borrows (once per stream; a stream swapped in later,
    as a test runner does, is wrapped on the next borrow)."""
    if sys.stderr is not None and not isinstance(sys.stderr, _SerialisedStream):
        sys.stderr = _SerialisedStream(sys.stderr)


@contextlib.contextmanager
def borrowed_stderr(target: IO[bytes]) -> Iterator[bool]:
    """Point descriptor 2 at ``target`` while the block runs, under :data:`STDERR_LOCK`; yields
    False (and borrows nothing) when descriptor 2 cannot be duplicated."""
    with STDERR_LOCK:
        serialise_python_stderr()
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            yield False
            return
        try:
            os.dup2(target.fileno(), 2)
        except OSError:
            os.close(saved)
            yield False
            return
        try:
            yield True
        finally:
            os.dup2(saved, 2)
            os.close(saved)
