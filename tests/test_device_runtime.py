"""The device runtime on the committed golden bundle (no TensorFlow needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from device_helpers import CELLS, GOLDEN, golden_copy

from edgekit.device import runtime
from edgekit.device.preprocess import load_for_model, read_image
from edgekit.device.runtime import load_classifier, resolve_artifact
from edgekit.errors import BundleError, IntegrityError
from edgekit.manifest import Thresholds, load_manifest

EXPECTED = json.loads((GOLDEN / "expected.json").read_text())
# int8 outputs are multiples of 1/256: allow one step for a different CPU's kernels
TOLERANCE = {"tflite_int8": 1 / 256 + 1e-6, "tflite_fp32": 1e-5, "onnx_fp32": 1e-5}


def _batch(manifest) -> np.ndarray:
    return np.stack([load_for_model(CELLS / name, manifest.preprocessing) for name in EXPECTED["crops"]])


@pytest.mark.parametrize("fmt", sorted(EXPECTED["probabilities"]))
def test_golden_probabilities(fmt):
    clf = load_classifier(GOLDEN, fmt)
    assert clf.fmt == fmt and clf.labels == EXPECTED["labels"]
    probs = clf.predict(_batch(clf.manifest))
    assert probs.dtype == np.float32 and probs.shape == (len(EXPECTED["crops"]), 2)
    np.testing.assert_allclose(probs, EXPECTED["probabilities"][fmt], atol=TOLERANCE[fmt])


def test_default_format_is_int8_first():
    clf = load_classifier(GOLDEN)
    assert clf.fmt == "tflite_int8"
    assert clf.bundle_dir == GOLDEN and clf.model_sha256 == clf.manifest.artifacts["tflite_int8"].sha256


def test_threads_do_not_change_results():
    one = load_classifier(GOLDEN, "tflite_fp32", threads=1)
    two = load_classifier(GOLDEN, "tflite_fp32", threads=2)
    batch = _batch(one.manifest)
    np.testing.assert_allclose(one.predict(batch), two.predict(batch), atol=1e-6)


def test_classify_goes_through_prepare_and_thresholds():
    clf = load_classifier(GOLDEN, "tflite_fp32")
    rgb = read_image(CELLS / EXPECTED["crops"][0])
    pred = clf.classify(rgb)
    expected = EXPECTED["probabilities"]["tflite_fp32"][0]
    assert pred.p_positive == pytest.approx(expected[0], abs=1e-5)
    assert pred.label == EXPECTED["labels"][int(np.argmax(expected))]
    assert pred.probability == pytest.approx(max(expected), abs=1e-5)


def test_interpret_decisions_use_the_uncertain_band():
    clf = load_classifier(GOLDEN, "tflite_fp32")
    clf.manifest.thresholds = Thresholds(positive=0.8, negative=0.2, cutoff=0.5)
    assert clf.interpret(np.array([0.9, 0.1])).decision == "positive"
    assert clf.interpret(np.array([0.5, 0.5])).decision == "uncertain"
    assert clf.interpret(np.array([0.1, 0.9])).decision == "negative"
    p = clf.interpret(np.array([0.3, 0.7]))
    assert (p.label, p.probability, p.p_positive) == ("Uninfected", 0.7, 0.3)


def test_printed_label_is_the_counted_call_not_the_argmax():
    """Below 0.5 but above the cutoff: printed Parasitized (as the parasitemia counts it), uncertain."""
    clf = load_classifier(GOLDEN, "tflite_fp32")
    clf.manifest.thresholds = Thresholds(positive=0.99, negative=0.1, cutoff=0.426)
    p = clf.interpret(np.array([0.45, 0.55]))
    assert (p.label, p.probability, p.decision) == ("Parasitized", 0.45, "uncertain")
    assert clf.manifest.decision.is_counted_positive(p.p_positive)
    p = clf.interpret(np.array([0.42, 0.58]))
    assert (p.label, p.decision) == ("Uninfected", "uncertain")
    assert not clf.manifest.decision.is_counted_positive(p.p_positive)


def test_predict_rejects_wrong_shape():
    clf = load_classifier(GOLDEN)
    with pytest.raises(ValueError, match="expected a batch of shape"):
        clf.predict(np.zeros((1, 64, 64, 3), np.uint8))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_tampered_or_truncated_model_is_refused(tmp_path, damage):
    bundle = golden_copy(tmp_path / "b")
    model = bundle / "model_int8.tflite"
    data = bytearray(model.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    model.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        load_classifier(bundle, "tflite_int8")


def test_missing_model_file(tmp_path):
    bundle = golden_copy(tmp_path / "b")
    (bundle / "model_fp32.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_classifier(bundle, "onnx_fp32")


def _edit_manifest(bundle, edit):
    m = json.loads((bundle / "manifest.json").read_text())
    edit(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_manifest_input_size_mismatch(tmp_path):
    bundle = golden_copy(tmp_path / "b")
    _edit_manifest(bundle, lambda m: m["preprocessing"].update(input_size=[64, 64]))
    with pytest.raises(BundleError, match="does not match the manifest"):
        load_classifier(bundle, "tflite_fp32")


def test_manifest_declared_input_mismatch(tmp_path):
    bundle = golden_copy(tmp_path / "b")
    _edit_manifest(bundle, lambda m: m["artifacts"]["tflite_int8"]["inputs"][0].update(dtype="float32"))
    with pytest.raises(BundleError, match="declares input"):
        load_classifier(bundle, "tflite_int8")


def test_manifest_label_count_mismatch(tmp_path):
    bundle = golden_copy(tmp_path / "b")
    _edit_manifest(bundle, lambda m: m.update(labels=["a", "b", "c"], positive_label=None))
    with pytest.raises(BundleError, match="2 (outputs|classes) but"):
        load_classifier(bundle, "tflite_fp32")


def test_format_resolution(tmp_path):
    manifest = load_manifest(GOLDEN)
    assert resolve_artifact(manifest).format == "tflite_int8"
    manifest.artifacts["tflite_int8"].status = "failed_validation"
    assert resolve_artifact(manifest).format == "tflite_fp32"  # no onnx_int8 in the golden bundle
    with pytest.raises(BundleError, match="failed_validation"):
        resolve_artifact(manifest, "tflite_int8")
    with pytest.raises(BundleError, match="has no onnx_int8"):
        resolve_artifact(manifest, "onnx_int8")
    manifest.artifacts = {}
    with pytest.raises(BundleError, match="edgekit model export"):
        resolve_artifact(manifest)


def test_default_bundle_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "default_bundle_dir", lambda: tmp_path / "none")
    with pytest.raises(BundleError, match="no default model"):
        load_classifier()


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load_classifier(tmp_path / "missing")
    with pytest.raises(BundleError, match="no manifest.json"):
        load_classifier(tmp_path)
