"""Hostile inputs, session 14: a tampered manifest naming a model's sha256 as a list, a model that
gives NaN for some images, a screening database with malformed values in its rows, and a single
cell crop given as a whole field: each is one clear line and a non-zero exit (or a per-field
refusal), never a traceback or a result made of nothing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from device_helpers import CELLS, golden_copy

from edgekit.cli import main

CROP = CELLS / "parasitized_a.webp"


def _one_line_refusal(res) -> str:
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code != 0, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    return errors[0]


@pytest.mark.parametrize("value", [[], {}, ["a" * 64]])
@pytest.mark.parametrize("command", ["verify", "classify"])
def test_a_model_sha256_that_is_not_a_string_is_one_line(tmp_path, value, command):
    """`trust verify` (and every command that loads the bundle) ended in a TypeError traceback
    (unhashable type: 'list') from the revocation check, which ran before the manifest's types."""
    bundle = golden_copy(tmp_path / "b")
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    data["artifacts"]["tflite_int8"]["sha256"] = value
    path.write_text(json.dumps(data))
    args = ["trust", "verify", str(bundle)] if command == "verify" else \
        ["classify", "-m", str(bundle), "--allow-unsigned", str(CROP)]
    line = _one_line_refusal(CliRunner().invoke(main, args))
    assert "sha256" in line or "signature" in line, line
