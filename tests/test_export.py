"""Export to TFLite/ONNX in one verified bundle (issue 3): a tiny model exported end to end."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit import formats
from edgekit.errors import IntegrityError
from edgekit.export.options import ALL_FORMATS, Bounds, ExportOptions
from edgekit.manifest import load_manifest, read_manifest_data, verify_artifact

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("onnxruntime")

from bundle_factory import make_tiny_run  # noqa: E402

SIZE = 32


# ---------------------------------------------------------------- a tiny run folder


def _make_run(root: Path, cells: Path) -> Path:
    return make_tiny_run(root, cells, SIZE, epochs=3)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cell_folder) -> Path:
    return _make_run(tmp_path_factory.mktemp("export"), cell_folder)


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory) -> Path:
    from edgekit.export.bundle import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "b"
    export_bundle(tiny_run, out, ExportOptions(allow_drop=True))
    return out


def _copy_run(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


# ---------------------------------------------------------------- the whole export


def test_bundle_has_every_format_with_checksums_and_report(bundle, tiny_run):
    m = load_manifest(bundle)
    assert list(m.artifacts) == ["keras", *[f.value for f in ALL_FORMATS]]
    assert (bundle / "labels.txt").read_text().split() == m.labels == ["Parasitized", "Uninfected"]
    for key, a in m.artifacts.items():
        assert verify_artifact(bundle, a).stat().st_size == a.bytes > 0
        if key != "keras":
            assert a.path == formats.get(key).filename and a.runtime == formats.get(key).runtime
            assert a.validation["n"] == len(json.loads((tiny_run.parent / "split.json").read_text())
                                            ["parts"]["val"])
    report = json.loads((bundle / "validation.json").read_text())
    assert set(report["formats"]) == {f.value for f in ALL_FORMATS}
    table = (bundle / "validation.md").read_text()
    assert all(f.value in table for f in ALL_FORMATS) and "| format | size" in table
    assert m.versions["tensorflow"] and m.versions["onnxruntime"]
    assert not list(bundle.glob(".export-*")), "temporary folder left behind"
    # the quantization scheme is recorded as the format table states it (and as it was used)
    assert m.artifacts["onnx_int8"].quantization == formats.get("onnx_int8").quantization
    assert m.artifacts["onnx_int8"].quantization["format"] == "QDQ"
    assert m.artifacts["tflite_fp32"].quantization == {}


def test_float_formats_match_keras_within_their_bounds(bundle):
    v = {k: a.validation for k, a in load_manifest(bundle).artifacts.items()}
    for key in ("tflite_fp32", "onnx_fp32"):
        assert v[key]["status"] == "ok" and v[key]["max_abs_diff"] <= 1e-4
    assert v["tflite_fp16"]["status"] == "ok" and 0 < v["tflite_fp16"]["max_abs_diff"] <= 1e-2
    for key in ("tflite_int8", "onnx_int8"):
        rec = v[key]
        ok = rec["agreement"] >= 0.99 and rec["accuracy_drop"] <= 0.005
        assert rec["status"] == ("ok" if ok else "failed_validation")
        assert 0 < rec["max_abs_diff"] < 0.5  # really quantized, and not garbage


def test_each_artifact_runs_in_its_runtime_as_the_manifest_says(bundle, cell_folder):
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.device.preprocess import load_for_model
    from edgekit.export.bundle import load_keras, load_runner

    m = load_manifest(bundle)
    paths = sorted(cell_folder.rglob("*.png"))[:4]
    x = np.stack([load_for_model(p, m.preprocessing) for p in paths])
    reference = load_keras(bundle / "model.keras").predict(x.astype(np.float32), verbose=0)
    for key, a in m.artifacts.items():
        if key == "keras":
            continue
        fmt = formats.get(key)
        # every format ends at the logits; the runner applies the softmax as the manifest says
        assert (a.output, a.activation) == ("logits", "softmax")
        runner = load_runner(fmt, bundle / a.path, output=a.output, activation=a.activation)
        assert runner.inputs == a.inputs and runner.outputs == a.outputs
        probs = runner.predict(x)
        assert probs.shape == (4, 2) and np.allclose(probs.sum(axis=1), 1, atol=0.02)
        assert np.abs(probs - reference).max() <= {"exact": 1e-4, "fp16": 1e-2}.get(fmt.check, 0.1)
    # int8 TFLite: the device feeds raw uint8 pixels and dequantizes the output itself
    spec_in, spec_out = m.artifacts["tflite_int8"].inputs[0], m.artifacts["tflite_int8"].outputs[0]
    assert (spec_in.dtype, spec_in.scale, spec_in.zero_point) == ("uint8", 1.0, 0)
    assert spec_out.dtype == "uint8" and spec_out.scale > 0
    it = Interpreter(model_path=str(bundle / "model_int8.tflite"))
    it.allocate_tensors()
    d_in, d_out = it.get_input_details()[0], it.get_output_details()[0]
    it.set_tensor(d_in["index"], x[:1])
    it.invoke()
    raw = it.get_tensor(d_out["index"])
    assert raw.dtype == np.uint8
    z = (raw.astype(np.float32) - spec_out.zero_point) * spec_out.scale  # logits: argmax as the softmax's
    assert np.argmax(z) == np.argmax(reference[0]) or abs(reference[0, 0] - 0.5) < 0.05
    for key in ("onnx_fp32", "onnx_int8"):
        assert m.artifacts[key].inputs[0].dtype == "float32"
        assert m.artifacts[key].outputs[0].dtype == "float32"


def test_onnx_files_carry_labels_and_input_size(bundle):
    import onnx

    for name in ("model_fp32.onnx", "model_int8.onnx"):
        meta = {p.key: p.value for p in onnx.load(str(bundle / name)).metadata_props}
        assert json.loads(meta["labels"]) == ["Parasitized", "Uninfected"]
        assert json.loads(meta["input_size"]) == [SIZE, SIZE]
        assert meta["color_order"] == "RGB" and meta["positive_label"] == "Parasitized"
    int8 = onnx.load(str(bundle / "model_int8.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)


def test_flipped_byte_is_refused(bundle, tmp_path):
    copy = shutil.copytree(bundle, tmp_path / "b")
    a = load_manifest(copy).artifacts["tflite_int8"]
    data = bytearray((copy / a.path).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / a.path).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        verify_artifact(copy, a)


def test_band_is_chosen_on_the_deployed_formats_outputs(tiny_run, tmp_path):
    """Thresholds chosen on validation (here: by hand, as train would) keep their cutoff; the band is
    chosen again on the int8 TFLite outputs of the validation crops, and each format records how the
    band calls them. A run whose thresholds are the defaults keeps them."""
    from edgekit.export.bundle import export_bundle
    from edgekit.manifest import Thresholds

    run = _copy_run(tiny_run, tmp_path / "run")
    m = load_manifest(run)
    m.thresholds = Thresholds(0.9, 0.1, "validation crops (n=9), Keras outputs: cutoff by Youden J; band x",
                              0.45)
    m.save(run)
    opts = ExportOptions(formats=(formats.get("tflite_int8"), formats.get("onnx_int8")), allow_drop=True)
    out = export_bundle(run, tmp_path / "b", opts)
    t = out.thresholds
    assert t.cutoff == 0.45 and (t.positive, t.negative) != (0.9, 0.1)
    assert t.source.startswith("validation crops (n=9), Keras outputs: cutoff by Youden J; band: ")
    assert "on tflite_int8 outputs of the validation crops" in t.source
    for key in ("tflite_int8", "onnx_int8"):
        band = out.artifacts[key].validation["band"]
        assert band["positive_edge"] == t.positive and band["called_positive"] + band["called_negative"] \
            + band["uncertain"] == out.artifacts[key].validation["n"]
        assert out.artifacts[key].validation["output_scale"] > 0  # one int8 step of the logits
    default = export_bundle(tiny_run, tmp_path / "d", opts)
    assert default.thresholds == load_manifest(tiny_run).thresholds  # nothing chosen on validation


# ---------------------------------------------------------------- failures leave nothing behind


def test_missed_bound_fails_and_writes_nothing(tiny_run, tmp_path):
    from edgekit.errors import ValidationFailed
    from edgekit.export.bundle import export_bundle

    strict = ExportOptions(formats=(formats.get("tflite_fp16"),), bounds=Bounds(fp16_max_abs=0.0))
    out = tmp_path / "out"
    with pytest.raises(ValidationFailed, match="tflite_fp16.*max \\|dp\\|"):
        export_bundle(tiny_run, out, strict)
    assert not out.exists()
    run = _copy_run(tiny_run, tmp_path / "run")
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(ValidationFailed):
        export_bundle(run, None, strict)  # in place
    assert sorted(p.name for p in run.iterdir()) == before
    assert list(load_manifest(run).artifacts) == ["keras"]

    strict.allow_drop = True
    m = export_bundle(run, None, strict)
    assert m.artifacts["tflite_fp16"].status == "failed_validation"
    assert load_manifest(run).artifacts["tflite_fp16"].status == "failed_validation"
    assert (run / "model_fp16.tflite").is_file()


def test_converter_failure_is_one_clear_error(tiny_run, tmp_path, monkeypatch):
    from edgekit.errors import ExportError
    from edgekit.export import tflite
    from edgekit.export.bundle import export_bundle

    def unsupported(converter, calib, image_input):
        raise RuntimeError("loc(fused): error: 'tf.Foo' op is neither a custom op nor a flex op\nmore noise")

    monkeypatch.setitem(tflite.CONFIGURE, "tflite_dynamic", unsupported)
    with pytest.raises(ExportError, match=r"^tflite_dynamic export failed: .*'tf.Foo' op is neither"):
        export_bundle(tiny_run, tmp_path / "out", ExportOptions(formats=(formats.get("tflite_dynamic"),)))
    assert not (tmp_path / "out").exists()
    opts = ExportOptions(formats=(formats.get("tflite_fp32"), formats.get("tflite_dynamic")), allow_drop=True)
    m = export_bundle(tiny_run, tmp_path / "out", opts)
    assert m.artifacts["tflite_dynamic"].status == "export_failed"
    assert m.artifacts["tflite_fp32"].status == "ok"
    assert not (tmp_path / "out" / "model_dynamic.tflite").exists()


def _cli(args: list[str]):
    from click.testing import CliRunner

    from edgekit.cli import main

    return CliRunner().invoke(main, ["export", *args])


def _assert_one_error_line(result, pattern: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "Traceback" not in result.output
    assert pattern in lines[-1], lines[-1]


def test_bad_inputs_give_one_error_line_and_leave_nothing(tiny_run, tmp_path, cell_folder):
    import keras

    out = tmp_path / "out"
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    _assert_one_error_line(_cli(["--keras", str(corrupt), "--labels", "a,b", "--calibration",
                                 str(cell_folder), "-o", str(out)]), "is not a Keras model file")
    _assert_one_error_line(_cli(["--keras", str(tmp_path / "missing.keras"), "--labels", "a,b",
                                 "--calibration", str(cell_folder)]), "Keras model not found")
    run = _copy_run(tiny_run, tmp_path / "run")
    (run / "model.keras").write_bytes(b"garbage")
    _assert_one_error_line(_cli([str(run)]), "sha256")

    mlp = keras.Sequential([keras.Input((60,)), keras.layers.Dense(2, activation="softmax")])
    mlp.save(tmp_path / "mlp.keras")
    _assert_one_error_line(_cli(["--keras", str(tmp_path / "mlp.keras"), "--labels", "R,M", "--calibration",
                                 str(cell_folder), "-o", str(out)]), "is not an image")
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    _assert_one_error_line(_cli(["--keras", str(tiny_run / "model.keras"), "--labels",
                                 "Parasitized,Uninfected", "--calibration", str(empty), "-o", str(out)]),
                           "no images")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _assert_one_error_line(_cli([str(tiny_run), "-o", str(blocker / "sub"), "--formats", "tflite_fp32"]),
                           "cannot create output folder")
    assert not out.exists()
    assert not list(tiny_run.glob(".export-*"))


# ---------------------------------------------------------------- bring your own model


def test_bring_your_own_image_model_via_cli(tiny_run, tmp_path, cell_folder):
    from edgekit.signing import check_bundle, generate_keypair, key_id, load_public_key

    out = tmp_path / "byo"
    key, pub = generate_keypair(tmp_path / "site")
    result = _cli(["--keras", str(tiny_run / "model.keras"), "--labels", "Parasitized,Uninfected",
                   "--calibration", str(cell_folder), "--formats", "tflite_int8,onnx_fp32", "-o", str(out),
                   "--allow-drop", "--sign-key", str(key)])
    assert result.exit_code == 0, result.output
    assert f"signed with key {key_id(load_public_key(pub))}" in result.output
    assert "not in the keyring" in check_bundle(out, read_manifest_data(out)).reason  # not trusted yet
    m = load_manifest(out)
    assert m.preprocessing.input_size == (SIZE, SIZE)  # read from the model
    import keras

    assert m.training["parameters"] == keras.models.load_model(tiny_run / "model.keras").count_params()
    assert list(m.artifacts) == ["keras", "tflite_int8", "onnx_fp32"]
    assert m.artifacts["onnx_fp32"].status == "ok"
    assert m.artifacts["tflite_int8"].validation["n"] == 72  # labelled folder, reused for validation
    for a in m.artifacts.values():
        verify_artifact(out, a)


def test_bring_your_own_tabular_model_with_csv(tmp_path):
    import keras

    from edgekit.export.bundle import export_bundle

    rng = np.random.default_rng(0)
    x = rng.random((208, 60)).astype(np.float32)  # Sonar-shaped: 60 features in [0, 1], R/M labels
    y = (x[:, :10].mean(axis=1) > 0.5).astype(int)
    keras.utils.set_random_seed(0)
    mlp = keras.Sequential([keras.Input((60,)), keras.layers.Dense(16, activation="relu"),
                            keras.layers.Dense(1, activation="sigmoid")])
    mlp.compile("adam", "binary_crossentropy")
    mlp.fit(x, y, epochs=20, verbose=0)
    mlp.save(tmp_path / "sonar.keras")
    csv_file = tmp_path / "sonar.csv"
    rows = [",".join(f"{v:.4f}" for v in row) + "," + "RM"[lbl] for row, lbl in zip(x, y, strict=True)]
    csv_file.write_text("\n".join(rows) + "\n")
    np.save(tmp_path / "sonar.npy", x[:50])
    m = export_bundle(tmp_path / "sonar.keras", None,
                      ExportOptions(labels=["R", "M"], calibration=csv_file, validation=csv_file,
                                    allow_drop=True))
    out = tmp_path / "sonar_bundle"
    assert load_manifest(out).training["input"] == {"kind": "features", "shape": [60]}
    assert m.artifacts["tflite_fp32"].status == m.artifacts["onnx_fp32"].status == "ok"
    int8 = m.artifacts["tflite_int8"]
    assert int8.inputs[0].dtype == "float32" and int8.validation["agreement"] >= 0.9
    assert int8.validation["n"] == 208 and "accuracy" in int8.validation
    m2 = export_bundle(tmp_path / "sonar.keras", tmp_path / "npy_bundle",
                       ExportOptions(labels=["R", "M"], calibration=tmp_path / "sonar.npy",
                                     formats=(formats.get("onnx_int8"),), allow_drop=True))
    rec = m2.artifacts["onnx_int8"].validation
    assert rec["n"] == 50 and "accuracy" not in rec  # no labels in a bare .npy


def test_interrupted_commit_leaves_no_stale_checksum(bundle, tmp_path, monkeypatch):
    from edgekit.export import bundle as bundle_mod

    copy = shutil.copytree(bundle, tmp_path / "b")

    real_replace = os.replace

    def crash(src, dst):  # the manifest's own atomic writes go through; moving the model file fails
        if str(dst).endswith(".tflite"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(bundle_mod.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        bundle_mod.export_bundle(copy, None, ExportOptions(formats=(formats.get("tflite_fp32"),)))
    m = load_manifest(copy)
    assert "tflite_fp32" not in m.artifacts and "onnx_int8" in m.artifacts
    for a in m.artifacts.values():
        verify_artifact(copy, a)  # everything still listed is exactly what was validated
    assert not list(copy.glob(".export-*"))


def test_a_multi_file_format_commits_every_file():
    """A format whose artifact holds several files (the table allows it: OpenVINO's .xml + .bin)
    commits them all into the bundle, not only the file the runtime opens."""
    from edgekit.export.bundle import artifact_files
    from edgekit.manifest import Artifact

    two = Artifact(format="x", path="model.xml", sha256="a", bytes=1, runtime="r",
                   extra_files={"model.bin": "b"})
    failed = Artifact(format="y", path="y.tflite", sha256="c", bytes=1, runtime="r", status="export_failed")
    kept = Artifact(format="z", path="z.tflite", sha256="d", bytes=1, runtime="r", status="failed_validation")
    assert artifact_files({"x": two, "y": failed, "z": kept}) == ["model.xml", "model.bin", "z.tflite"]
