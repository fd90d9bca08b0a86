"""The format table is the one place format facts live: consistent, and read by every consumer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from device_helpers import GOLDEN

from edgekit import formats
from edgekit.device import runtime
from edgekit.errors import BundleError, IntegrityError
from edgekit.export import options, pack
from edgekit.export.pack import pack_bundle
from edgekit.manifest import load_manifest, sha256_file, verify_artifact


def test_table_is_consistent():
    names = [f.name for f in formats.FORMATS]
    assert len(names) == len(set(names))
    for f in formats.FORMATS:
        assert f.runtime in formats.RUNTIMES and f.check in formats.CHECKS and f.files
        assert not f.calibration or f.check == "statistical"  # a quantized format is checked statistically
        assert (f.device_rank is not None) == formats.RUNTIMES[f.runtime].device
        assert not f.packed or f.device_rank is not None
    ranks = [f.device_rank for f in formats.FORMATS if f.device_rank is not None]
    assert sorted(ranks) == list(range(len(ranks)))
    with pytest.raises(BundleError, match="unknown format"):
        formats.get("tflite_int4")


def test_consumers_read_the_table():
    assert runtime.FORMAT_ORDER == formats.DEVICE_ORDER and runtime.FORMAT_ORDER[0] == "tflite_int8"
    assert pack.DEVICE_FORMATS == formats.PACKED == ("tflite_int8", "onnx_int8")
    assert options.ALL_FORMATS == formats.EXPORT_FORMATS and "keras" not in formats.DEVICE_ORDER


def test_every_tflite_row_has_a_converter_setting():
    from edgekit.export import tflite  # numpy at import; TensorFlow only inside the converter

    assert set(tflite.CONFIGURE) == {f.name for f in formats.FORMATS if f.family == "tflite"}


def test_multi_file_artifact_is_verified_and_packed_whole(tmp_path):
    """A format of several files (OpenVINO's .xml + .bin): every file is checked and copied."""
    bundle = tmp_path / "b"
    shutil.copytree(GOLDEN, bundle)
    (bundle / "model_fp32.bin").write_bytes(b"weights" * 100)
    data = json.loads((bundle / "manifest.json").read_text())
    data["artifacts"]["onnx_fp32"]["extra_files"] = {"model_fp32.bin": sha256_file(bundle / "model_fp32.bin")}
    (bundle / "manifest.json").write_text(json.dumps(data))
    art = load_manifest(bundle).artifacts["onnx_fp32"]
    assert list(art.files) == ["model_fp32.onnx", "model_fp32.bin"]
    assert verify_artifact(bundle, art) == bundle / "model_fp32.onnx"
    pack_bundle(bundle, tmp_path / "out", ("onnx_fp32",))
    assert (tmp_path / "out" / "model_fp32.bin").read_bytes() == b"weights" * 100
    (bundle / "model_fp32.bin").write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="model_fp32.bin"):
        verify_artifact(bundle, art)


def test_format_names_files_and_runtimes():
    assert [f.value for f in options.ALL_FORMATS] == [
        "tflite_fp32", "tflite_fp16", "tflite_dynamic", "tflite_int8", "onnx_fp32", "onnx_int8"]
    assert formats.get("tflite_int8").filename == "model_int8.tflite"
    assert formats.get("onnx_fp32").filename == "model_fp32.onnx"
    assert formats.get("tflite_dynamic").filename == "model_dynamic.tflite"
    assert {f.runtime for f in options.ALL_FORMATS} == {"litert", "onnxruntime"}
    assert options.parse_formats("all") == options.ALL_FORMATS
    pair = (formats.get("onnx_int8"), formats.get("tflite_fp32"))
    assert options.parse_formats("onnx_int8, tflite_fp32") == pair
    with pytest.raises(ValueError, match="tflite_int4"):
        options.parse_formats("tflite_int4")


def test_stratified_sample_keeps_class_shares():
    from edgekit.export.calibration import stratified_sample

    labels = np.array([0] * 900 + [1] * 100)
    idx = stratified_sample(labels, 300, seed=0)
    assert len(idx) == 300 and len(set(idx.tolist())) == 300
    assert (labels[idx] == 1).sum() == 30
    assert len(stratified_sample(labels, 5000)) == 1000
    rare = np.array([0] * 99 + [1])
    assert (rare[stratified_sample(rare, 10)] == 1).sum() == 1  # a rare class still gets one


def test_golden_bundle_records_what_export_records():
    """The committed golden bundle carries the manifest fields export writes, from the same table."""
    manifest = load_manifest(GOLDEN)
    for key, art in manifest.artifacts.items():
        spec = formats.get(key)
        assert art.path == spec.filename and art.runtime == spec.runtime
        assert art.quantization == spec.quantization
    assert json.loads((GOLDEN / "manifest.json").read_text())["artifacts"]["tflite_int8"]["quantization"]
