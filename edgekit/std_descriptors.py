# pyright: basic
"""Standard descriptors closed when the program starts (``edgekit ... >&-``, a service started
without them). Python then sets ``sys.stdout``/``sys.stderr`` to None (click drops what is echoed to
None, and ``sys.stderr.isatty()`` fails), and the next file opened would take descriptor 1 or 2, so a
native library's warning could land in it. Each closed descriptor is pointed at /dev/null: stdin reads
nothing, stderr's lines go nowhere (the exit status still tells), and stdout is opened read-only, so
a result written to it fails ("cannot write output", exit 2) instead of vanishing with exit 0."""

from __future__ import annotations

import os
import sys

_FLAGS = {0: os.O_RDONLY, 1: os.O_RDONLY, 2: os.O_WRONLY}
_NAMES = {0: ("stdin", "r"), 1: ("stdout", "w"), 2: ("stderr", "w")}


def claim_closed() -> None:
    """Point each closed standard descriptor at /dev/null and give Python a stream for it."""
    for fd, flags in _FLAGS.items():
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, flags)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        name, mode = _NAMES[fd]
        if getattr(sys, name) is None:
            stream = open(fd, mode, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
            setattr(sys, name, stream)
