"""The emulated-Pi check's own logic (the emulation itself runs in .ci/run, not here): skipping with
a reason where the machine cannot emulate, and the x86-vs-arm64 comparison catching what matters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgekit.benchmarks import pi_emulation as pe


def _probe_dir(root: Path, p_tflite: float = 0.25, p_onnx: float = 0.5, decision: str = "uncertain",
               field_box: tuple[int, ...] = (1, 2, 30, 40), board: str = "rpi4",
               field_p: float = 0.01, keras: bool = False) -> Path:
    root.mkdir(parents=True)
    for name, _ in pe.probe_commands(""):
        (root / f"{name}.rc").write_text("0\n")
        (root / f"{name}.err").write_text("")
    for fmt, p in (("tflite_int8", p_tflite), ("onnx_int8", p_onnx)):
        rows = [{"path": f"c{i}.png", "p_parasitized": p, "decision": decision} for i in range(3)]
        (root / f"classify_{fmt}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    field = {"field": "f.jpg", "cells": 1, "parasitized": 0, "positive": 0, "negative": 1, "uncertain": 0,
             "parasitemia": 0.0,
             "cell_list": [{"box": list(field_box), "p": field_p, "decision": "negative"}]}
    (root / "field.jsonl").write_text(json.dumps(field) + "\n")
    (root / "screen.json").write_text(json.dumps({"decision": "negative", "cells": 10, "parasitized": 0}))
    (root / "bench").mkdir()
    row = {"format": "tflite_int8", "threads": 1, "status": "ok", "accuracy": 0.9, "sensitivity": 0.8,
           "specificity": 1.0, "auc": 0.95, "threads_effective": 1, "delegate": "XNNPACK"}
    rows = [row, {**row, "format": "keras"}] if keras else [row]
    bench = {"rows": rows, "meta": {"profile": {"name": board}, "host": {"board": "Raspberry Pi 4"}}}
    (root / "bench" / "bench.json").write_text(json.dumps(bench))
    return root


def test_identical_runs_pass(tmp_path: Path) -> None:
    x86, arm = _probe_dir(tmp_path / "x86"), _probe_dir(tmp_path / "arm")
    checks = pe.compare_outputs(x86, arm)
    assert checks and all(c["ok"] for c in checks), [c for c in checks if not c["ok"]]


@pytest.mark.parametrize(("change", "failing"), [
    ({"p_tflite": 0.25 + 2 * pe.TFLITE_BOUND}, "classify tflite_int8"),  # beyond one output step
    ({"p_onnx": 0.5 + 1.25 * pe.ONNX_BOUND}, "classify onnx_int8"),  # beyond the 4-step bound
    ({"decision": "positive"}, "classify "),  # a flipped decision (both formats here)
    ({"field_box": (1, 2, 30, 41)}, "field"),  # a cell found elsewhere
    ({"field_p": 0.01 + 2 * pe.TFLITE_BOUND}, "field"),  # a cell's p beyond one output step
    ({"board": "host"}, "bench detects"),
])
def test_each_difference_is_caught(tmp_path: Path, change: dict, failing: str) -> None:
    x86, arm = _probe_dir(tmp_path / "x86"), _probe_dir(tmp_path / "arm", **change)
    bad = [c["check"] for c in pe.compare_outputs(x86, arm) if not c["ok"]]
    assert bad and all(b.startswith(failing) for b in bad), bad


def test_keras_is_the_workstation_reference_never_a_device_row(tmp_path: Path) -> None:
    # x86 measures Keras as its reference; the device install has no TensorFlow, so no Keras row
    x86, arm = _probe_dir(tmp_path / "x86", keras=True), _probe_dir(tmp_path / "arm")
    assert all(c["ok"] for c in pe.compare_outputs(x86, arm))
    # a Keras row on the emulated Pi means TensorFlow reached the device install
    tf_on_arm = _probe_dir(tmp_path / "arm_tf", keras=True)
    bad = [c["check"] for c in pe.compare_outputs(x86, tf_on_arm) if not c["ok"]]
    assert bad == ["bench: no Keras row on arm64 (the device install has no TensorFlow)"]


def test_within_bounds_passes(tmp_path: Path) -> None:
    # measured on QEMU cortex-a72/a76: LiteRT int8 one uint8 output step off x86
    x86 = _probe_dir(tmp_path / "x86")
    arm = _probe_dir(tmp_path / "arm", p_onnx=0.5 + 0.75 * pe.ONNX_BOUND,
                     p_tflite=0.25 + 0.9 * pe.TFLITE_BOUND, field_p=0.01 + 0.9 * pe.TFLITE_BOUND)
    assert all(c["ok"] for c in pe.compare_outputs(x86, arm))


def test_a_machine_that_cannot_emulate_skips_with_the_reason(monkeypatch, capsys) -> None:
    monkeypatch.setattr(pe, "emulation_problem", lambda: "qemu-user-static is not installed")
    monkeypatch.delenv("EDGEKIT_PI_CHECK", raising=False)
    assert pe.main([]) == 0
    err = capsys.readouterr().err
    assert "skipped: this machine cannot run the emulated Pi check: qemu-user-static" in err
    monkeypatch.setenv("EDGEKIT_PI_CHECK", "0")
    assert pe.main([]) == 0 and "skipped: EDGEKIT_PI_CHECK=0" in capsys.readouterr().err


def test_no_cached_rootfs_skips_unless_building_is_allowed(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(pe, "emulation_problem", lambda: None)
    monkeypatch.setattr(pe, "CACHE", tmp_path / "cache")
    monkeypatch.delenv("EDGEKIT_PI_CHECK", raising=False)
    assert pe.main([]) == 0
    assert "no cached arm64 rootfs" in capsys.readouterr().err
    if shutil.which("debootstrap") is None:
        monkeypatch.setenv("EDGEKIT_PI_CHECK", "1")
        assert pe.main([]) == 0 and "debootstrap is not installed" in capsys.readouterr().err


def test_requirements_come_from_pyproject() -> None:
    reqs = pe.requirements()
    assert any(r.startswith("ai-edge-litert") for r in reqs)
    assert any(r.startswith("onnxruntime") for r in reqs)
    assert not any(r.startswith("tensorflow") for r in reqs)
