"""Hostile inputs, round 3: what the round-2 audit left open. Each case here hung, stopped a run,
or passed silently before its fix."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.data import scan_dataset


def _images(root: Path, names_by_class: dict[str, list[str]]) -> Path:
    img = np.full((12, 12, 3), 128, np.uint8)
    for cls, names in names_by_class.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for name in names:
            cv2.imwrite(str(root / cls / name), img)
    return root


@pytest.fixture
def watchdog():
    """Turns a hang into a failure: Python's regex engine checks for signals while it backtracks."""
    def hung(*_):
        raise AssertionError("still running after 60 s")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(a|a)+$"])
def test_a_catastrophic_group_regex_is_refused_not_run_forever(tmp_path, monkeypatch, watchdog, pattern):
    """`model split --groups 'regex:(a+)+$'` on names of 40 a's then b ran for hours."""
    monkeypatch.setattr("edgekit.group_regex.BASE_SECONDS", 1.0)
    data = _images(tmp_path / "data", {c: [f"{'a' * 40}{i}b{c}.png" for i in range(3)] for c in "AB"})
    res = CliRunner().invoke(main, ["model", "split", str(data), "-o", str(tmp_path / "s.json"),
                                    "--groups", f"regex:{pattern}"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert f"group regex {pattern!r} is too slow" in res.output
    assert not (tmp_path / "s.json").exists()


def test_ordinary_group_regexes_group_as_before(tmp_path):
    data = _images(tmp_path / "data", {"A": ["f1__c1.png", "f1__c2.png", "f2__c1.png"],
                                       "B": ["f2__c3.png", "f3__c1.png"]})
    by_field = scan_dataset(data, group_mode=r"regex:^(.+)__")
    assert [i.group for i in by_field.items] == ["f1", "f1", "f2", "f2", "f3"]
    whole = scan_dataset(data, group_mode=r"regex:f\d")  # no capture group: the whole match
    assert [i.group for i in whole.items] == ["f1", "f1", "f2", "f2", "f3"]
    for pattern, message in [("[", "bad group regex '\\[': unterminated character set"),
                             ("zz", "group regex 'zz' does not match 'f1__c1.png'")]:
        res = CliRunner().invoke(main, ["model", "split", str(data), "--groups", f"regex:{pattern}",
                                        "-o", str(tmp_path / "s.json")])
        assert res.exit_code == 2 and "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1
        assert re.search(message, res.output), res.output
