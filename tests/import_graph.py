"""edgekit's own import graph, read from the source (ast only, nothing imported): which module imports
which, deferred imports included, and which private names cross modules. Used by the house-rule and
packaging tests."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (folder, package): the top-level folders are the edgekit subpackages of the same name
SOURCES = (("edgekit", "edgekit"), ("device", "edgekit.device"), ("export", "edgekit.export"),
           ("benchmarks", "edgekit.benchmarks"))
MAPPED = {package.rsplit(".", 1)[-1] for _, package in SOURCES[1:]}
MODULE_STRING = re.compile(r"edgekit(?:\.\w+)+")


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package, by dotted name (packages by their ``__init__.py``)."""
    found: dict[str, Path] = {}
    for folder, package in SOURCES:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root / folder).with_suffix("").parts
            if "__pycache__" in rel or (folder == "edgekit" and rel[0] in MAPPED):
                continue  # edgekit/device etc. are the links to the top-level folders
            found[".".join([package, *(p for p in rel if p != "__init__")])] = path
    return found


def _absolute(name: str) -> str:
    head = name.split(".", 1)[0]
    return f"edgekit.{name}" if head in MAPPED else name


@dataclass
class Graph:
    """Import edges between the package's modules and private names used across them."""

    mods: dict[str, Path]
    edges: dict[str, set[str]] = field(default_factory=dict)
    strings: dict[str, set[str]] = field(default_factory=dict)  # modules named in string constants
    private: list[tuple[str, str, str, int]] = field(default_factory=list)  # (module, target, name, line)

    def _target(self, mod: str, node: ast.ImportFrom) -> str:
        if not node.level:
            return _absolute(node.module or "")
        parts = mod.split(".")
        if self.mods[mod].name != "__init__.py":
            parts = parts[:-1]
        parts = parts[:len(parts) - node.level + 1]
        return ".".join(parts + ([node.module] if node.module else []))

    def _add(self, mod: str, target: str) -> None:
        if target in self.mods and target != mod:
            self.edges.setdefault(mod, set()).add(target)

    def scan(self, mod: str) -> None:
        tree = ast.parse(self.mods[mod].read_text(encoding="utf-8"))
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = self._target(mod, node)
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    if full in self.mods:
                        self._add(mod, full)
                        aliases[alias.asname or alias.name] = full
                        continue
                    self._add(mod, target)
                    if _private(alias.name) and target in self.mods and target != mod:
                        self.private.append((mod, target, alias.name, node.lineno))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    name = _absolute(alias.name)
                    self._add(mod, name)
                    if name in self.mods:
                        aliases[alias.asname or name] = name
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                for name in MODULE_STRING.findall(node.value):
                    if name in self.mods:
                        self.strings.setdefault(mod, set()).add(name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                owner = aliases.get(ast.unparse(node.value))
                if owner and owner != mod:
                    self.private.append((mod, owner, node.attr, node.lineno))

    def cycles(self) -> list[list[str]]:
        """Strongly connected components of more than one module (Tarjan, iterative)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        found: list[list[str]] = []
        for start in self.mods:
            if start in index:
                continue
            work = [(start, iter(sorted(self.edges.get(start, ()))))]
            index[start] = low[start] = len(index)
            stack.append(start)
            on_stack.add(start)
            while work:
                node, children = work[-1]
                child = next(children, None)
                if child is not None:
                    if child not in index:
                        index[child] = low[child] = len(index)
                        stack.append(child)
                        on_stack.add(child)
                        work.append((child, iter(sorted(self.edges.get(child, ())))))
                    elif child in on_stack:
                        low[node] = min(low[node], index[child])
                    continue
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
        return sorted(found)

    def closure(self, starts: set[str]) -> set[str]:
        """The modules ``starts`` can load at run time: imports, modules named in strings (the CLI's
        lazy command table, ``python -m`` workers) and every parent package on the way."""
        seen: set[str] = set()
        todo = list(starts)
        while todo:
            mod = todo.pop()
            if mod in seen:
                continue
            seen.add(mod)
            parent = mod.rpartition(".")[0]
            todo.extend([*self.edges.get(mod, ()), *self.strings.get(mod, ()), *([parent] if parent else [])])
        return seen


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def graph(root: Path = ROOT) -> Graph:
    result = Graph(modules(root))
    for mod in result.mods:
        result.scan(mod)
    return result
