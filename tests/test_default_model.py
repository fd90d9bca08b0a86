"""The model shipped inside the package: intact, small, and screening the README's sample crops."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.device.preprocess import read_image
from edgekit.device.runtime import default_bundle_dir, load_classifier
from edgekit.manifest import load_manifest, verify_artifact

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "cells"


def _samples() -> list[tuple[Path, str]]:
    return [(p, p.parent.name) for p in sorted(EXAMPLES.glob("*/*")) if p.is_file()]


def test_default_bundle_is_intact_and_small():
    folder = default_bundle_dir()
    manifest = load_manifest(folder)
    assert sorted(manifest.artifacts) == ["onnx_int8", "tflite_int8"]
    for art in manifest.artifacts.values():
        assert art.status == "ok" and art.validation["agreement"] >= 0.99
        assert verify_artifact(folder, art).stat().st_size == art.bytes
    assert sum(p.stat().st_size for p in folder.iterdir()) < 1_000_000
    assert manifest.labels == ["Parasitized", "Uninfected"] and manifest.positive_label == "Parasitized"
    t = manifest.thresholds
    assert 0 < t.negative <= t.cutoff <= t.positive < 1


@pytest.mark.parametrize("fmt", ["tflite_int8", "onnx_int8"])
def test_default_model_screens_the_sample_crops(fmt):
    clf = load_classifier(default_bundle_dir(), fmt)
    samples = _samples()
    assert len(samples) >= 10 and {label for _, label in samples} == {"Parasitized", "Uninfected"}
    preds = [clf.classify(read_image(p)) for p, _ in samples]
    correct = sum(pr.label == label for pr, (_, label) in zip(preds, samples, strict=True))
    # a trained model, not a constant one: both labels predicted, clearly better than chance
    assert {pr.label for pr in preds} == {"Parasitized", "Uninfected"}
    assert correct >= 0.6 * len(samples), correct


def test_readme_first_command_runs_without_tensorflow():
    code = ("import sys; from edgekit.cli import main\n"
            f"try: main(['classify', {str(EXAMPLES)!r}, '--format', 'csv'])\n"
            "except SystemExit as e: assert e.code in (0, None), e.code\n"
            "print('TF', any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "TF False"
    assert len([ln for ln in lines if ".webp" in ln]) == len(_samples())
