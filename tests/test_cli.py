"""Every subcommand is registered and documents itself; user errors are one line, not a traceback."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from edgekit.cli import COMMANDS, main


def test_every_command_is_registered():
    ctx = click.Context(main)
    assert main.list_commands(ctx) == sorted(name for _, name in COMMANDS)
    assert all(main.get_command(ctx, name).name == name for _, name in COMMANDS)
    assert main.get_command(ctx, "nope") is None


def test_a_command_loads_only_its_own_module():
    """Cold start: `edgekit classify` does not import the training, export or benchmark commands."""
    import subprocess
    import sys

    code = ("import sys; from edgekit.cli import main\n"
            "try: main(['classify', '--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('edgekit')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    loaded = out.strip().splitlines()[-1]
    assert "edgekit.device.commands" in loaded
    assert "edgekit.commands'" not in loaded and "edgekit.export" not in loaded and "benchmarks" not in loaded


@pytest.mark.parametrize("name", [name for _, name in COMMANDS])
def test_help(name):
    res = CliRunner().invoke(main, [name, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage: main " + name in res.output or f"{name} [OPTIONS]" in res.output


def test_sessions_subcommands_help():
    for sub in ("list", "show", "export"):
        res = CliRunner().invoke(main, ["sessions", sub, "--help"])
        assert res.exit_code == 0, res.output


def test_missing_path_is_one_line(tmp_path):
    res = CliRunner().invoke(main, ["info", str(tmp_path / "nope")])
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    assert len([line for line in res.output.splitlines() if line.strip()]) <= 2


@pytest.mark.parametrize("argv, old, new, value", [
    (["evaluate", "run", "--split", "val"], "--split", "--part", "val"),
    (["evaluate", "run", "--data", "/d"], "--data", "--data-root", "/d"),
    (["train", "split.json", "-o", "r", "--data", "/d"], "--data", "--data-root", "/d"),
    (["bench", "--batch", "4"], "--batch", "--batch-size", 4),
])
def test_old_spellings_still_work_but_are_hidden(argv, old, new, value):
    cmd = main.commands[argv[0]]
    params = cmd.make_context(argv[0], argv[1:]).params
    assert value in [str(v) if isinstance(value, str) else v for v in params.values()]
    help_text = CliRunner().invoke(main, [argv[0], "--help"]).output
    assert new in help_text and f"{old} " not in help_text.replace(f"{old}-", "")


def test_sessions_export_out_spellings():
    cmd = main.commands["sessions"].commands["export"]
    assert cmd.make_context("export", ["--output", "x.csv"]).params["output"].name == "x.csv"
    assert cmd.make_context("export", ["-o", "x.csv", "--format", "jsonl"]).params["out_format"] == "jsonl"


@pytest.mark.parametrize("argv", [["classify"], ["bench", "--batch-size", "0"], ["nosuch"],
                                  ["pack", "-o", "x"], ["field", "--format", "xml", "f.jpg"]])
def test_usage_errors_are_one_line(argv):
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Usage:" not in res.output
