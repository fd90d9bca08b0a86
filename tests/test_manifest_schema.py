"""Manifest validation before anything is read (issue 13, cases 2 and 9): malformed fields are one
clear line, artifact paths cannot leave the bundle folder, not even through a symlink."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from device_helpers import CELLS, golden_copy

from edgekit.cli import main
from edgekit.device.runtime import load_classifier
from edgekit.errors import BundleError
from edgekit.manifest import load_manifest, read_manifest_data
from edgekit.manifest_schema import validate_manifest_data

CROP = sorted(CELLS.iterdir())[0]


def _bundle(tmp_path, change):
    bundle = golden_copy(tmp_path / "b")
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))
    return bundle


def _one_line_error(bundle, match: str) -> None:
    res = CliRunner().invoke(main, ["classify", str(CROP), "-m", str(bundle)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.stdout == ""
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and match in errors[0], res.stderr


@pytest.mark.parametrize("change, match", [
    (lambda d: d.update(artifacts=list(d["artifacts"].values())), "artifacts must be an object"),
    (lambda d: d["preprocessing"].update(input_size=[64]), "preprocessing.input_size"),
    (lambda d: d["preprocessing"].update(input_size=[64, "64"]), "preprocessing.input_size"),
    (lambda d: d["preprocessing"].update(input_size=[100000, 100000]), "preprocessing.input_size"),
    (lambda d: d.update(labels="Parasitized"), "labels"),
    (lambda d: d.update(labels=["A", "A"]), "labels"),
    (lambda d: d.update(labels=["Uninfected\nforged row", "Parasitized"]), "each one printable line"),
    (lambda d: d["thresholds"].update(positive="high"), "thresholds.positive"),
    (lambda d: d["thresholds"].update(positive=True), "thresholds.positive"),
    (lambda d: d["patient_rule"].update(stop_cells=-1), "patient_rule.stop_cells"),
    (lambda d: d["patient_rule"].update(positive_evidence="median"), "patient_rule.positive_evidence"),
    (lambda d: d["patient_rule"].update(refused_crops=0), "patient_rule.refused_crops"),
    (lambda d: d["artifacts"]["tflite_int8"].update(sha256="abc"), "sha256"),
    (lambda d: d["artifacts"]["tflite_int8"].update(bytes="big"), "bytes"),
    (lambda d: d["artifacts"]["tflite_int8"]["outputs"][0].update(shape="2"), "shape"),
    (lambda d: d.update(labels=["A", "B", "C"]), "declare 2 classes but there are 3 labels"),
    (lambda d: d["artifacts"]["tflite_int8"].update(format="onnx_int8"), "named"),
])
def test_malformed_fields_are_one_clear_line(tmp_path, change, match):
    _one_line_error(_bundle(tmp_path, change), match)


@pytest.mark.parametrize("path", ["../../../../etc/passwd", "/etc/passwd", "../other/model.tflite",
                                  "sub/../../x.tflite", "C:\\model.tflite", "", ".", "./"])
def test_artifact_paths_stay_inside_the_bundle(tmp_path, path):
    bundle = _bundle(tmp_path, lambda d: d["artifacts"]["tflite_int8"].update(path=path))
    _one_line_error(bundle, "malformed manifest: artifacts.tflite_int8.path")


def test_symlink_escape_is_refused(tmp_path):
    outside = tmp_path / "other"
    outside.mkdir()
    bundle = golden_copy(tmp_path / "b")
    os.replace(bundle / "model_int8.tflite", outside / "model_int8.tflite")
    (bundle / "model_int8.tflite").symlink_to(outside / "model_int8.tflite")
    with pytest.raises(BundleError, match="outside the bundle folder"):
        load_classifier(bundle, "tflite_int8")


def test_artifact_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    bundle = golden_copy(tmp_path / "b")
    (bundle / "model_int8.tflite").unlink()
    os.mkfifo(bundle / "model_int8.tflite")
    with pytest.raises(BundleError, match="FIFO"):
        load_classifier(bundle, "tflite_int8")


@pytest.mark.parametrize("text, match", [
    ('{"labels": ["A", "B"], "labels": ["B", "A"]}', "appears twice"),
    ('{"labels": ["A", "B"], "thresholds": {"positive": NaN}}', "thresholds.positive"),
    ("[1, 2]", "not a JSON object"),
    ("\xff\xfe", "cannot read"),
    ('{"labels": ["A", "B"], "n": ' + "9" * 5000 + "}", "cannot read"),  # int() digit limit: ValueError
])
def test_strict_json(tmp_path, text, match):
    (tmp_path / "manifest.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(BundleError, match=match):
        load_manifest(tmp_path)


def test_huge_manifest_is_refused_before_parsing(tmp_path):
    with open(tmp_path / "manifest.json", "wb") as f:
        f.truncate(9 * 1024 * 1024)
    with pytest.raises(BundleError, match="too large"):
        read_manifest_data(tmp_path)


def test_unknown_keys_are_allowed():
    validate_manifest_data({"labels": ["a", "b"], "domain": {"anything": 1}, "preprocessing": {"stain": "x"}})
