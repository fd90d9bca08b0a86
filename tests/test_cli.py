"""Every subcommand is registered and documents itself; user errors are one line, not a traceback."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from edgekit.cli import FIELD, MODEL, OLD_SPELLINGS, SITE, TRUST, main

GROUPED = [("model", name) for name in MODEL] + [("site", name) for name in SITE] + \
          [("trust", name) for name in TRUST]
# every command name that was top-level before the groups, still typed at the top
OLD_TOP = [*FIELD, "programme", "site", *OLD_SPELLINGS]


def test_top_level_is_the_field_verbs_and_the_groups():
    ctx = click.Context(main)
    assert main.list_commands(ctx) == ["classify", "field", "screen", "camera", "sessions", "serve", "sync",
                                       "model", "site", "trust", "programme"]
    assert set(main.get_command(ctx, "model").list_commands(ctx)) == {
        "split", "train", "evaluate", "export", "pack", "import", "info", "bench"}
    assert set(main.get_command(ctx, "site").list_commands(ctx)) == {"cells", "adapt", "domain", "check"}
    assert set(main.get_command(ctx, "trust").list_commands(ctx)) == {"keygen", "sign", "verify"}
    assert all(main.get_command(ctx, group).get_command(ctx, name).name == name for group, name in GROUPED)
    assert main.get_command(ctx, "nope") is None


@pytest.mark.parametrize("name", sorted(OLD_SPELLINGS))
def test_old_top_level_spellings_resolve_unlisted(name):
    ctx = click.Context(main)
    group, new = OLD_SPELLINGS[name]
    assert main.get_command(ctx, name) is main.get_command(ctx, group).get_command(ctx, new)
    assert name not in main.list_commands(ctx)
    listed = CliRunner().invoke(main, ["--help"]).output.split("Commands:")[1]
    assert f"\n  {name} " not in listed


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


@pytest.mark.parametrize("argv", [[name] for name in OLD_TOP] + [[group, name] for group, name in GROUPED])
def test_help(argv):
    res = CliRunner().invoke(main, [*argv, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage: main " + " ".join(argv) in res.output


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
    (["bench", "--data", "/d"], "--data", "--dataset", "/d"),
    (["adapt", "m", "-o", "o", "--data", "/d"], "--data", "--dataset", "/d"),
    (["adapt", "m", "-o", "o", "--dataset", "c", "--fields", "/f"], "--fields", "--field-images", "/f"),
])
def test_old_spellings_still_work_but_are_hidden(argv, old, new, value):
    cmd = main.get_command(click.Context(main), argv[0])
    params = cmd.make_context(argv[0], argv[1:]).params
    assert value in [str(v) if isinstance(value, str) else v for v in params.values()]
    help_text = CliRunner().invoke(main, [argv[0], "--help"]).output
    assert new in help_text and f"{old} " not in help_text.replace(f"{old}-", "")


def test_sessions_export_out_spellings():
    cmd = main.commands["sessions"].commands["export"]
    assert cmd.make_context("export", ["--output", "x.csv"]).params["output"].name == "x.csv"
    assert cmd.make_context("export", ["-o", "x.csv", "--format", "jsonl"]).params["out_format"] == "jsonl"


@pytest.mark.parametrize("argv", [["classify"], ["bench", "--batch-size", "0"], ["nosuch"],
                                  ["pack", "-o", "x"], ["field", "--format", "xml", "f.jpg"],
                                  ["model", "train"], ["bench", "--formats", "tflite_int4"],
                                  ["model", "export", "r", "--formats", "onnx_int4"],
                                  ["pack", "b", "-o", "x", "--formats", "keras"],
                                  ["site", "adapt", "m", "--data", "d", "-o", "o", "--formats", "int8"],
                                  ["field", "--model-format", "tflite_int4", "f.jpg"],
                                  ["classify", "--model-format", "keras", "c.png"]])
def test_usage_errors_are_one_line(argv):
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Usage:" not in res.output


@pytest.mark.parametrize("argv", [[], ["model"], ["site"], ["trust"], ["sessions"], ["site", "domain"]])
def test_a_group_alone_shows_its_help_as_the_top_level_does(argv):
    res = CliRunner().invoke(main, argv, prog_name="edgekit")
    assert res.exit_code == 2
    assert res.output.startswith(f"Usage: edgekit {' '.join(argv)}".rstrip()) and "error:" not in res.output


def test_unknown_format_names_the_table():
    res = CliRunner().invoke(main, ["model", "bench", "--formats", "tflite_int4"])
    assert res.exit_code == 2 and "unknown format(s) tflite_int4; choose from keras," in res.output


@pytest.mark.parametrize("path, args, old, value", [
    (["info"], [], "--json", "json"),
    (["site", "check"], ["b", "--data", "d"], "--json", "json"),
    (["screen"], ["--patient", "p"], "--json", "json"),
    (["sessions", "show"], [], "--json", "json"),
    (["sync"], ["db", "--to", "postgresql://h/d"], "--json", "json"),
    (["sessions", "export"], ["--format", "jsonl"], "--csv", "csv"),
])
def test_one_format_option_old_flags_hidden(path, args, old, value):
    ctx = click.Context(main)
    cmd = main
    for word in path:
        cmd = cmd.get_command(ctx, word)
    assert cmd.make_context(path[-1], [*args, old]).params["out_format"] == value
    assert cmd.make_context(path[-1], list(args)).params["out_format"] != value
    help_text = cmd.get_help(click.Context(cmd, info_name=path[-1]))
    assert "--format" in help_text and f"{old} " not in help_text


@pytest.mark.parametrize("path, args, old, new", [
    (["site", "check"], ["b", "--data", "/d"], "--data", "--dataset"),
    (["site", "check"], ["b", "--dataset", "c", "--fields", "/d"], "--fields", "--field-images"),
    (["site", "domain", "fit"], ["b", "--data", "/d"], "--data", "--dataset"),
    (["sessions", "confirm"], ["1", "--csv", "/d"], "--csv", "--verdicts"),
])
def test_one_name_per_meaning_old_spellings_hidden(path, args, old, new):
    ctx = click.Context(main)
    cmd = main
    for word in path:
        cmd = cmd.get_command(ctx, word)
    assert "/d" in [str(v) for v in cmd.make_context(path[-1], args).params.values()]
    help_text = cmd.get_help(click.Context(cmd, info_name=path[-1]))
    assert new in help_text and f"{old} " not in help_text
