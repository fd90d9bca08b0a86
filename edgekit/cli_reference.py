# pyright: basic
"""The CLI reference, generated from the click tree so it cannot drift from ``--help``:
``docs/cli.md`` (every listed command and group, its help and options) and the README's command
table (between the ``cli-table`` markers). Hidden commands and old option spellings are left out.

    python -m edgekit.cli_reference           # rewrite both
    python -m edgekit.cli_reference --check   # exit 1 and name the stale files
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
CLI_MD = ROOT / "docs" / "cli.md"
README = ROOT / "README.md"
START, END = "<!-- cli-table:start -->", "<!-- cli-table:end -->"
COMMAND = "python -m edgekit.cli_reference"

# who each top-level verb or group is for (the README table's last column)
WHO = {
    "classify": "field worker", "field": "field worker", "screen": "field worker", "camera": "field worker",
    "sessions": "field worker, microscopist", "serve": "field worker", "sync": "station",
    "model": "engineer", "site": "site engineer", "trust": "maintainer, site", "programme": "programme",
}


def _listed(group: click.Group, ctx: click.Context) -> Iterator[tuple[str, click.Command]]:
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is not None and not cmd.hidden:
            yield name, cmd


def _walk(cmd: click.Command, ctx: click.Context) -> Iterator[click.Context]:
    """Every listed command below ``cmd`` (groups too), each with its own context, depth first."""
    yield ctx
    if isinstance(cmd, click.Group):
        for name, sub in _listed(cmd, ctx):
            yield from _walk(sub, click.Context(sub, info_name=name, parent=ctx))


def _help(cmd: click.Command) -> str:
    return inspect.cleandoc(cmd.help or "").replace("\b\n", "")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _section(ctx: click.Context) -> str:
    cmd = ctx.command
    usage = " ".join([ctx.command_path, *cmd.collect_usage_pieces(ctx)])
    lines = [f"## `{ctx.command_path}`", "", _help(cmd), "", f"    {usage}", ""]
    helper = cmd.get_help_option(ctx)
    shown = [p for p in cmd.get_params(ctx) if isinstance(p, click.Option) and p is not helper]
    rows = [r for p in shown if (r := p.get_help_record(ctx)) is not None]
    if rows:
        lines += ["| option | meaning |", "|---|---|"]
        lines += [f"| `{_cell(opts)}` | {_cell(text)} |" for opts, text in rows]
        lines.append("")
    if isinstance(cmd, click.Group):
        subs = [f"`{name}`" for name, _ in _listed(cmd, ctx)]
        lines += [f"Commands: {', '.join(subs)}.", ""]
    return "\n".join(lines)


def _root() -> click.Context:
    from edgekit.cli import main

    return click.Context(main, info_name="edgekit")


def cli_markdown() -> str:
    """``docs/cli.md``: every listed command and group, in ``--help`` order."""
    head = ["# Command reference", "",
            f"Generated from the CLI itself by `{COMMAND}`; do not edit by hand. Old spellings (`edgekit "
            "train`, `--data`, `--json`, ...) still work and are left out here.", ""]
    body = "\n".join(_section(ctx) for ctx in _walk(_root().command, _root()))
    return "\n".join([*head, body.rstrip(), ""])


def cli_table() -> str:
    """The README's table: one line per top-level verb or group."""
    ctx = _root()
    rows = ["| command | what it does | who |", "|---|---|---|"]
    for name, cmd in _listed(ctx.command, ctx):  # type: ignore[arg-type]
        spelled = f"edgekit {name}"
        if isinstance(cmd, click.Group):
            spelled += " " + "\\|".join(sub for sub, _ in _listed(cmd, ctx))
        rows.append(f"| `{spelled}` | {_cell(cmd.get_short_help_str(limit=120))} | {WHO.get(name, '')} |")
    return "\n".join(rows) + "\n"


def _with_table(readme: str) -> str:
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{README}: the {START} ... {END} markers are missing")
    return readme[: start + len(START)] + "\n" + cli_table() + readme[end:]


def stale() -> list[Path]:
    """The generated files that differ from what the CLI says now."""
    out = []
    if not CLI_MD.is_file() or CLI_MD.read_text(encoding="utf-8") != cli_markdown():
        out.append(CLI_MD)
    text = README.read_text(encoding="utf-8")
    if _with_table(text) != text:
        out.append(README)
    return out


def main(argv: list[str] | None = None) -> int:
    """Rewrite the reference (``--check``: only report what is stale)."""
    args = sys.argv[1:] if argv is None else argv
    if "--check" in args:
        old = stale()
        for path in old:
            print(f"{path.relative_to(ROOT)} is stale: run `{COMMAND}`", file=sys.stderr)
        return 1 if old else 0
    CLI_MD.parent.mkdir(exist_ok=True)
    CLI_MD.write_text(cli_markdown(), encoding="utf-8")
    README.write_text(_with_table(README.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
