"""The README stays a five-minute read that opens with its two commands, and no docs link is dead."""

from __future__ import annotations

import re
from importlib.metadata import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
# [text](target), ![alt](target) and <img src="target">; code spans and fenced blocks are not links
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|<img\s[^>]*src=\"([^\"]+)\"")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def _links(page: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    return [a or b for a, b in LINK.findall(text)]


def _commands() -> list[str]:
    """The README's indented command lines, in order."""
    lines = README.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.startswith("    ") and line.strip()]


def test_readme_is_short():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 150


def test_every_relative_link_points_to_a_file():
    dead = []
    for page in PAGES:
        for target in _links(page):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # http(s), mailto and in-page anchors
            if not (page.parent / target.split("#")[0]).exists():
                dead.append(f"{page.relative_to(ROOT)}: {target}")
    assert not dead, dead


def test_every_docs_page_is_reachable_from_the_readme():
    linked = {(ROOT / t.split("#")[0]).resolve() for t in _links(README) if t.startswith("docs/")}
    for page in PAGES[1:]:  # a page linked from a linked page is reachable too
        if page.resolve() in linked:
            linked |= {(page.parent / t.split("#")[0]).resolve() for t in _links(page)}
    orphans = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not orphans, orphans


def test_readme_opens_with_the_device_command_then_the_test_command_ci_runs():
    device, tests = _commands()[:2]
    assert device.endswith('pip install ".[device]" && edgekit classify examples/cells'), device
    assert any((ROOT / "examples" / "cells").iterdir())
    assert {"device", "dev"} <= set(metadata("edgekit").get_all("Provides-Extra") or [])
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests.startswith("python3 -m venv .venv && "), tests
    # CI runs the README's test command: its install step, then its pytest line
    install, pytest_line = tests.rsplit(" && ", 1)
    assert install in ci and f"\n{pytest_line}\n" in ci, tests


def test_the_command_table_markers_are_there_once():
    text = README.read_text(encoding="utf-8")
    start, end = text.find("<!-- cli-table:start -->"), text.find("<!-- cli-table:end -->")
    assert text.count("<!-- cli-table:start -->") == text.count("<!-- cli-table:end -->") == 1
    assert 0 <= start < end


# an `edgekit ...` command in a code span or an indented line (a comment after "  #" left out)
COMMAND_SPAN = re.compile(r"`(edgekit [^`]+)`")


def _doc_commands(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    found = [m.group(1) for m in COMMAND_SPAN.finditer(text)]
    for line in text.splitlines():
        if line.startswith("    ") and "edgekit " in line:
            code = line.split("  #")[0]
            found.append(code[code.index("edgekit "):])
    return found


def _shown_options(cmd) -> set[str]:
    """The spellings ``--help`` shows (old ones, kept working but hidden, left out)."""
    shown: set[str] = set()
    for p in cmd.params:
        if getattr(p, "hidden", False):
            continue
        spellings = set(getattr(p, "opts", [])) | set(getattr(p, "secondary_opts", []))
        shown |= spellings - set(getattr(p, "aliases", ()))
    return shown


def _misspelt(command: str, root) -> list[str]:
    """The options of one docs command that its command's ``--help`` does not show. ``a | b`` after a
    group's subcommand names alternatives (`sessions list | show P17`)."""
    import click

    ctx = click.Context(root, info_name="edgekit")
    group, cmd, bad = None, root, []
    words = command.split()[1:]
    for word, following in zip(words, [*words[1:], ""], strict=True):
        if isinstance(cmd, click.Group):
            name = word.split("|")[0]
            sub = cmd.get_command(ctx, name)
            if sub is None:
                return []  # prose ("edgekit default"), not a command
            if name not in cmd.list_commands(ctx):
                return [f"{command!r}: {name} (an old name, unlisted in --help)"]
            group, cmd = cmd, sub
            ctx = click.Context(cmd, info_name=word, parent=ctx)
        elif word == "|" and group is not None and following in group.list_commands(ctx):
            cmd, ctx = group, ctx.parent  # the next word names a sibling: resolve it from the group
        elif word.lstrip("[").startswith("--"):
            name = word.lstrip("[").split("=")[0].rstrip("],.;:)")
            if name not in _shown_options(cmd):
                bad.append(f"{command!r}: {name}")
    return bad


def test_docs_commands_use_options_their_help_shows():
    """Every option a page gives an `edgekit` command is one that command's --help shows: no
    misspelt option and no old spelling (they still work, hidden from --help and docs/cli.md)."""
    from edgekit.cli import main

    wrong = [f"{page.relative_to(ROOT)}: {bad}" for page in PAGES if page.name != "cli.md"
             for command in _doc_commands(page) for bad in _misspelt(command, main)]
    assert not wrong, wrong
