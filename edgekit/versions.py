# pyright: basic
"""Installed tool versions, for the manifest's ``versions`` record (training and export both write it)."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib import metadata

# a tool name -> the distributions that may provide it, first found wins
DISTRIBUTIONS = {
    "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python"),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-macos"),
}


def tool_versions(names: Iterable[str], with_python: bool = False) -> dict[str, str]:
    """Versions of the named tools that are installed (others are left out); ``edgekit`` is this
    package's version; ``with_python`` adds the interpreter's."""
    from edgekit import __version__

    out: dict[str, str] = {}
    for name in names:
        if name == "edgekit":
            out[name] = __version__
            continue
        for dist in DISTRIBUTIONS.get(name, (name,)):
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    if with_python:
        out["python"] = platform.python_version()
    return out
