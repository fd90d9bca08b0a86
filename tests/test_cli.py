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
