"""The bundle manifest: round trip, integrity checks and clear errors."""

from __future__ import annotations

import json

import pytest

from edgekit.errors import BundleError, IntegrityError
from edgekit.manifest import (
    Artifact,
    Decision,
    Manifest,
    PatientRule,
    Preprocessing,
    TensorSpec,
    Thresholds,
    load_manifest,
    sha256_file,
    verify_artifact,
)


def _bundle(tmp_path):
    model = tmp_path / "model_int8.tflite"
    model.write_bytes(b"\x01\x02model-bytes" * 10)
    art = Artifact(
        format="tflite_int8", path=model.name, sha256=sha256_file(model), bytes=model.stat().st_size,
        runtime="litert",
        inputs=[TensorSpec("image", [1, 64, 64, 3], "uint8", 1.0, 0)],
        outputs=[TensorSpec("probabilities", [1, 2], "uint8", 1 / 256, 0)],
    )
    m = Manifest(labels=["Parasitized", "Uninfected"], positive_label="Parasitized",
                 thresholds=Thresholds(0.7, 0.3, "test"), artifacts={"tflite_int8": art})
    m.save(tmp_path)
    return m, model


def test_roundtrip(tmp_path):
    m, _ = _bundle(tmp_path)
    back = load_manifest(tmp_path)
    assert back.to_dict() == m.to_dict()
    assert back.preprocessing.input_size == (64, 64)
    assert back.positive_index == 0
    assert (tmp_path / "labels.txt").read_text().split() == ["Parasitized", "Uninfected"]
    assert back.artifacts["tflite_int8"].outputs[0].scale == pytest.approx(1 / 256)


def test_decision_is_one_object_and_round_trips():
    m = Manifest(labels=["Uninfected", "Parasitized"], positive_label="Parasitized",
                 thresholds=Thresholds(0.9, 0.2, cutoff=0.4), patient_rule=PatientRule(0.1, 0.02))
    d = m.decision
    assert (d.positive_index, d.counted_label, d.cutoff) == (1, "Parasitized", 0.4)
    assert [d.cell_call(p) for p in (0.95, 0.5, 0.1)] == ["positive", "uncertain", "negative"]
    assert d.is_counted_positive(0.4) and not d.is_counted_positive(0.39)
    assert d.cell_label_index([0.55, 0.45]) == 1  # counted positive although not the argmax
    assert d.cell_label_index([0.65, 0.35]) == 0
    assert d.patient_decision(10, 100) == "positive" and d.patient_decision(0, 0) == "refer"
    assert Decision.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    with pytest.raises(BundleError, match="malformed decision"):
        Decision.from_dict({"labels": ["a", "b"]})
    multi = Manifest(labels=["a", "b", "c"]).decision
    assert multi.positive_index is None and multi.counted_label == "c"
    assert multi.cell_label_index([0.2, 0.5, 0.3]) == 1


def test_thresholds_have_an_uncertain_band():
    t = Thresholds(positive=0.7, negative=0.3)
    assert [t.decide(p) for p in (0.9, 0.7, 0.5, 0.3, 0.1)] == [
        "positive", "positive", "uncertain", "uncertain", "negative"]


def test_flipped_byte_is_refused(tmp_path):
    m, model = _bundle(tmp_path)
    assert verify_artifact(tmp_path, m.artifacts["tflite_int8"]) == model
    data = bytearray(model.read_bytes())
    data[5] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        verify_artifact(tmp_path, m.artifacts["tflite_int8"])
    model.unlink()
    with pytest.raises(BundleError, match="missing"):
        verify_artifact(tmp_path, m.artifacts["tflite_int8"])


@pytest.mark.parametrize("content", ["{not json", "[]", json.dumps({"labels": ["only-one"]}),
                                     json.dumps({"labels": ["a", "b"], "schema": "other/9"})])
def test_malformed_manifest(tmp_path, content):
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(BundleError):
        load_manifest(tmp_path)


def test_missing_bundle_and_bad_preprocessing(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(BundleError, match="no manifest.json"):
        load_manifest(tmp_path)
    with pytest.raises(BundleError, match="resize"):
        Preprocessing(resize="lanczos9")
