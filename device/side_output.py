# pyright: basic
"""Files a live run writes beside its count (the live overlay, ``camera --save`` frames and rows).

A full disk or a folder that went read-only must not stop the count: the first failure is said in
one line on stderr and later ones only counted (a nearly full disk fails the big writes and takes
the small ones: saying each failure after a success would be a line per frame). A failed overlay
stopped a patient's `screen --camera` session half way; a full disk stopped `camera --save`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


class SideOutput:
    """Writes that may fail without stopping the run; ``what`` names them in the one warning."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failing = False  # the last write failed
        self.lost = 0  # writes that failed in this run (the first one is said)

    def replace(self, path: str | os.PathLike, data: bytes) -> bool:
        """Write ``data`` to ``path`` through a temporary file renamed over it (a viewer refreshing
        the file never reads half of it); False when it could not be written."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            self._tmp_gone(tmp)
            return self._failed(path, exc)
        return self._worked()

    def append(self, path: str | os.PathLike, text: str) -> bool:
        """Append ``text`` to ``path``; False when it could not be written."""
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            return self._failed(Path(path), exc)
        return self._worked()

    def _worked(self) -> bool:
        self.failing = False
        return True

    def _failed(self, path: Path, exc: OSError) -> bool:
        self.lost += 1
        if self.lost == 1:
            print(f"warning: {self.what} {path} not written ({exc.strerror or exc}); counting goes on",
                  file=sys.stderr)
        self.failing = True
        return False

    @staticmethod
    def _tmp_gone(tmp: Path) -> None:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # the folder itself is gone or unreadable: nothing was left in it
            pass
