"""The bundle manifest: round trip, integrity checks and clear errors."""

from __future__ import annotations

import json

import pytest

from edgekit.errors import BundleError, IntegrityError
from edgekit.manifest import (
    Artifact,
    Manifest,
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
