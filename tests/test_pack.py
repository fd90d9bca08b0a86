"""`edgekit pack`: a device bundle keeps only verified, validated formats and still runs (no TensorFlow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from device_helpers import GOLDEN, cell_image, golden_copy

from edgekit.cli import main
from edgekit.device.runtime import load_classifier
from edgekit.errors import BundleError, IntegrityError
from edgekit.export.pack import pack_bundle
from edgekit.manifest import load_manifest


def test_pack_keeps_only_chosen_formats_and_runs(tmp_path):
    out = tmp_path / "device"
    assert pack_bundle(GOLDEN, out, ("tflite_int8", "onnx_fp32")) == ["tflite_int8", "onnx_fp32"]
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "manifest.json", "model_fp32.onnx",
                                                      "model_int8.tflite"]
    packed, original = load_manifest(out), load_manifest(GOLDEN)
    assert sorted(packed.artifacts) == ["onnx_fp32", "tflite_int8"]
    assert packed.preprocessing == original.preprocessing and packed.thresholds == original.thresholds
    img = cell_image(1)
    for fmt in ("tflite_int8", "onnx_fp32"):
        a = load_classifier(out, fmt).classify(img).probabilities
        b = load_classifier(GOLDEN, fmt).classify(img).probabilities
        np.testing.assert_array_equal(a, b)


def test_pack_refuses_missing_failed_and_tampered(tmp_path):
    with pytest.raises(BundleError, match="no onnx_int8"):
        pack_bundle(GOLDEN, tmp_path / "a", ("onnx_int8",))
    bundle = golden_copy(tmp_path / "b")
    data = json.loads((bundle / "manifest.json").read_text())
    data["artifacts"]["tflite_fp32"]["status"] = "failed_validation"
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="marked failed_validation"):
        pack_bundle(bundle, tmp_path / "c", ("tflite_fp32",))
    raw = bytearray((bundle / "model_int8.tflite").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (bundle / "model_int8.tflite").write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        pack_bundle(bundle, tmp_path / "d", ("tflite_int8",))
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_pack_cli_one_line_errors_and_replace(tmp_path):
    out = tmp_path / "dev"
    runner = CliRunner()
    res = runner.invoke(main, ["pack", str(GOLDEN), "-o", str(out), "--formats", "tflite_int8"])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and (out / "model_int8.tflite").is_file()
    res = runner.invoke(main, ["pack", str(GOLDEN), "-o", str(out), "--formats", "tflite_int8"])
    assert res.exit_code != 0 and "already exists" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["pack", str(GOLDEN), "-o", str(out), "--formats", "onnx_fp32", "--replace"])
    assert res.exit_code == 0, res.output
    assert sorted(load_manifest(out).artifacts) == ["onnx_fp32"] and not (out / "model_int8.tflite").exists()


def test_pack_keeps_a_model_that_sits_in_a_subfolder(tmp_path):
    """The manifest may name sub/model.tflite (it loads and verifies); pack failed with 'No such file'."""
    bundle = golden_copy(tmp_path / "b")
    (bundle / "signature.json").unlink()
    (bundle / "sub").mkdir()
    (bundle / "model_int8.tflite").rename(bundle / "sub" / "model_int8.tflite")
    data = json.loads((bundle / "manifest.json").read_text())
    data["artifacts"]["tflite_int8"]["path"] = "sub/model_int8.tflite"
    (bundle / "manifest.json").write_text(json.dumps(data))
    out = tmp_path / "device"
    assert pack_bundle(bundle, out, ("tflite_int8",)) == ["tflite_int8"]
    img = cell_image(2)
    np.testing.assert_array_equal(load_classifier(out, "tflite_int8").classify(img).probabilities,
                                  load_classifier(GOLDEN, "tflite_int8").classify(img).probabilities)
