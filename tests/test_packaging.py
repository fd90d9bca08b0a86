"""What the build configuration promises, checked statically (the build itself: .ci/wheel-smoke)."""

from __future__ import annotations

import importlib.util

import pytest
from import_graph import ROOT, SOURCES, graph

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def test_packages_are_every_folder_with_an_init() -> None:
    """The explicit package list and package-dir (installs never follow the links) miss no folder."""
    config = setuptools_config()
    assert config["package-dir"] == {package: folder for folder, package in SOURCES[1:]}
    found = {name for name, path in graph().mods.items() if path.name == "__init__.py"}
    assert sorted(config["packages"]) == sorted(found)


def test_the_wheel_ships_what_the_commands_import() -> None:
    """benchmarks/ ships only the modules the installed commands can load (imports, deferred ones
    included, the CLI's command table, ``python -m`` workers): all of them, and nothing else."""
    spec = importlib.util.spec_from_file_location("edgekit_backend", ROOT / "_build" / "edgekit_backend.py")
    assert spec and spec.loader
    backend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backend)
    imports = graph()
    limited = tuple(backend.SHIP_ONLY)
    ships = {package if name == "__init__" else f"{package}.{name}"
             for package, names in backend.SHIP_ONLY.items() for name in names}
    needed = imports.closure({m for m in imports.mods if not m.startswith(limited)})
    assert {m for m in needed if m.startswith(limited)} == ships
