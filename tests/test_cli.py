"""Every subcommand is registered and documents itself; user errors are one line, not a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from edgekit.cli import COMMANDS, main


def test_every_command_is_registered():
    assert sorted(main.commands) == sorted(name for _, name in COMMANDS)


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
