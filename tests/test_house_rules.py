"""The house rules CI enforces on the source (issue 24): no private name used across modules, no import
cycle (deferred imports included), no block at radon D or worse, pyright basic on the core and device."""

from __future__ import annotations

from pathlib import Path

import pytest
from import_graph import ROOT, graph

COMPLEXITY_LIMIT = 21  # radon D starts at 21


@pytest.fixture(scope="module")
def imports():
    return graph()


def checked(name: str) -> bool:
    return not name.startswith("edgekit.benchmarks")


def test_no_private_name_crosses_modules(imports) -> None:
    used = {(mod, target, name) for mod, target, name, _ in imports.private}
    assert used == set(), "private names used across modules (make them public)"


def test_no_import_cycle(imports) -> None:
    assert imports.cycles() == []


def test_complexity_budget(imports) -> None:
    from radon.complexity import cc_visit
    from radon.visitors import Class

    def blocks(items, prefix=""):  # functions and methods (radon lists both), and their closures
        for block in items:
            if not isinstance(block, Class):
                yield f"{prefix}{block.fullname}", block.complexity
                yield from blocks(block.closures, f"{prefix}{block.fullname}.")

    over = set()
    for mod, path in imports.mods.items():
        if checked(mod):
            over |= {f"{mod}:{name}" for name, score in blocks(cc_visit(path.read_text(encoding="utf-8")))
                     if score >= COMPLEXITY_LIMIT}
    assert over == set(), "blocks at radon D or worse: split them"


def test_core_and_device_are_type_checked(imports) -> None:
    files = {path.relative_to(ROOT).as_posix() for mod, path in imports.mods.items()
             if checked(mod) and not mod.startswith("edgekit.export")}
    marked = {f for f in files if (ROOT / f).read_text(encoding="utf-8").startswith("# pyright: basic\n")}
    assert files - marked == set(), "start these with `# pyright: basic`"


def test_graph_sees_deferred_and_relative_imports(tmp_path: Path) -> None:
    for folder in ("edgekit", "device", "export", "benchmarks"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "edgekit" / "a.py").write_text("def f():\n    from edgekit.device import b\n    b._x()\n")
    (tmp_path / "device" / "b.py").write_text("from . import c\n")
    (tmp_path / "device" / "c.py").write_text("import edgekit.a\n")
    found = graph(tmp_path)
    assert found.cycles() == [["edgekit.a", "edgekit.device.b", "edgekit.device.c"]]
    assert [p[:3] for p in found.private] == [("edgekit.a", "edgekit.device.b", "_x")]
