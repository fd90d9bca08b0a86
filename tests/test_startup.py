"""The ``edgekit`` script holds Python's cyclic collector off while it starts (edgekit.startup):
no collection walks the start's objects before the first result, and the collector is on again
(with those objects frozen) once the model is loaded, or at once for a command that loads none."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from device_helpers import CELLS, GOLDEN

# Runs the edgekit script's own entry point, noting each collection's generation and whether the
# command had printed anything yet; prints what it saw as JSON on stderr's last line.
SCRIPT = """
import gc, json, sys
seen = []
out = sys.stdout

class Watch:
    printed = False
    def write(self, text):
        Watch.printed = True
        return out.write(text)
    def __getattr__(self, name):
        return getattr(out, name)

gc.callbacks.append(lambda phase, info: phase == "start" and seen.append([info["generation"], Watch.printed]))
sys.stdout = Watch()
sys.argv = ["edgekit", *{args!r}]
from edgekit.entry import main
code = 0
try:
    main()
except SystemExit as e:
    code = e.code or 0
sys.stderr.write(json.dumps({{"code": code, "seen": seen, "enabled": gc.isenabled(),
                             "frozen": gc.get_freeze_count()}}) + "\\n")
"""


def _run(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(args=list(args))], capture_output=True,
                          text=True, timeout=120)
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("command", ["classify", "field"])
def test_no_collection_of_the_start_before_the_first_result(command):
    image = str(sorted(CELLS.iterdir())[0])
    more = ["--no-progress"] if command == "classify" else []
    got = _run(command, image, "--model", str(GOLDEN), "--format", "jsonl", *more)
    assert got["code"] in (0, 1)  # a crop taken for a field: rejected, with its line
    before = [gen for gen, printed in got["seen"] if not printed]
    # without the hold: 4-5 collections of the older generations (and ~45 of the youngest) here
    assert not [gen for gen in before if gen > 0], before
    assert got["enabled"] and got["frozen"] > 10_000  # on again, the start's objects set aside


def test_a_command_without_a_model_turns_the_collector_back_on(tmp_path):
    got = _run("sessions", "list", "--db", str(tmp_path / "none.sqlite"))
    assert got["code"] != 0  # no such database: one line, then the check below still holds
    assert got["enabled"] and got["frozen"] > 0
    # `field` waits for its model, but --count-only loads none: on again before the fields
    blank = tmp_path / "blank.png"
    blank.write_bytes(b"not an image")
    got = _run("field", str(blank), "--count-only", "--format", "jsonl")
    assert got["enabled"] and got["frozen"] > 0
    seen_on = [gen for gen, _ in got["seen"]]
    assert seen_on, "the collector never ran"


def test_the_collector_is_given_back_to_a_caller_in_the_same_process(monkeypatch, capsys):
    """`edgekit.entry.main` run in-process (as a test does) never leaves the collector off, even when
    the CLI never dispatched a command (Ctrl-C while it loads)."""
    import gc

    import edgekit.entry
    import edgekit.startup

    monkeypatch.setattr(sys, "argv", ["edgekit", "--version"])
    assert gc.isenabled()
    with pytest.raises(SystemExit):
        edgekit.entry.main()
    assert gc.isenabled() and not edgekit.startup._state["held"]
    assert "edgekit" in capsys.readouterr().out


def test_the_device_paths_dataclasses_have_their_own_docstrings():
    """A dataclass without a docstring gets one made from ``inspect.signature`` when it is created:
    ~0.2-0.5 ms of every start that imports it."""
    import dataclasses
    import importlib
    import inspect

    made = []
    for name in ("edgekit.manifest", "edgekit.formats", "edgekit.signing", "edgekit.device.runtime",
                 "edgekit.device.pipeline", "edgekit.device.quality", "edgekit.device.records",
                 "edgekit.device.screening", "edgekit.device.field.totals", "edgekit.device.field.types"):
        module = importlib.import_module(name)
        made += [f"{name}.{n}" for n, c in vars(module).items()
                 if inspect.isclass(c) and dataclasses.is_dataclass(c) and c.__module__ == name
                 and (c.__doc__ or "").startswith(f"{c.__name__}(")]
    assert not made, made
