"""edgekit import: foreign TFLite/ONNX models wrapped into bundles, their preprocessing honoured by the
device path and checked against the model's tensors; bad inputs give one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from device_helpers import CELLS, GOLDEN

from edgekit.cli import main
from edgekit.device.preprocess import load_for_model, model_input
from edgekit.device.runtime import check_input_values, load_classifier
from edgekit.errors import BundleError
from edgekit.manifest import Preprocessing, TensorSpec, load_manifest

LABELS = "Parasitized,Uninfected"


def _import(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["import", *args])
    return res.exit_code, res.output


def _crops(pre: Preprocessing) -> np.ndarray:
    return np.stack([load_for_model(p, pre) for p in sorted(CELLS.iterdir())])


def tiny_onnx(path: Path, outputs: int = 2, size: int = 8, seed: int = 0,
              batch: int | str = "n") -> np.ndarray:
    """An NHWC float ONNX model: spatial mean -> MatMul W -> Softmax. Returns W (3, outputs)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).normal(0, 3, (3, outputs)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["m", "w"], ["z"]),
         helper.make_node("Softmax", ["z"], ["p"], axis=1)],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, size, size, 3])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [batch, outputs])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return w


def test_import_tflite_reproduces_the_golden_bundle(tmp_path: Path) -> None:
    """The golden fp32 model scales in its graph: imported with --scale 1 it must give the golden
    bundle's own probabilities on the same crops."""
    golden = load_manifest(GOLDEN)
    out = tmp_path / "imported"
    code, text = _import(str(GOLDEN / "model_fp32.tflite"), "--labels", LABELS, "--scale", "1",
                         "--resize", golden.preprocessing.resize, "--positive-index", "0", "-o", str(out))
    assert code == 0, text
    m = load_manifest(out)
    assert list(m.artifacts) == ["tflite_fp32"] and m.preprocessing.scaling == "in_model"
    assert m.positive_label == "Parasitized" and m.preprocessing.input_range == (0.0, 255.0)
    x = _crops(m.preprocessing)
    mine = load_classifier(out).predict(x)
    ref = load_classifier(GOLDEN, "tflite_fp32").predict(x)
    np.testing.assert_array_equal(mine, ref)
    # and the imported bundle runs through the ordinary device commands
    res = CliRunner().invoke(main, ["classify", "--model", str(out), "--format", "jsonl", str(CELLS)])
    assert res.exit_code == 0, res.output
    assert len([ln for ln in res.output.splitlines() if ln.startswith("{")]) == len(list(CELLS.iterdir()))


def test_device_scaling_is_applied(tmp_path: Path) -> None:
    """--scale 1/255 makes the device feed pixel/255: the same as calling the interpreter by hand."""
    from ai_edge_litert.interpreter import Interpreter

    out = tmp_path / "scaled"
    code, text = _import(str(GOLDEN / "model_fp32.tflite"), "--labels", LABELS, "--scale", "1/255",
                         "-o", str(out))
    assert code == 0, text
    clf = load_classifier(out)
    assert clf.manifest.preprocessing.input_range == (0.0, 1.0)
    x = _crops(clf.manifest.preprocessing)
    it = Interpreter(model_path=str(GOLDEN / "model_fp32.tflite"))
    it.resize_tensor_input(it.get_input_details()[0]["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x.astype(np.float32) / np.float32(255))
    it.invoke()
    np.testing.assert_allclose(clf.predict(x), it.get_tensor(it.get_output_details()[0]["index"]), atol=1e-6)
    raw = load_classifier(GOLDEN, "tflite_fp32").predict(x)
    assert np.abs(clf.predict(x) - raw).max() > 1e-3  # the scaling really changed the input


def test_import_onnx_with_mean_std_and_bgr(tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    w = tiny_onnx(model)
    out = tmp_path / "onnx_bundle"
    code, text = _import(str(model), "--labels", "a,b", "--scale", "1/255", "--mean", "0.485,0.456,0.406",
                         "--std", "0.229,0.224,0.225", "--color-order", "BGR", "-o", str(out))
    assert code == 0, text
    clf = load_classifier(out)
    assert clf.fmt == "onnx_fp32" and clf.manifest.preprocessing.color_order == "BGR"
    x = np.random.default_rng(1).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    z = ((x / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).mean(axis=(1, 2)) @ w
    want = np.exp(z - z.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(clf.predict(x), want, atol=1e-5)
    lo, hi = clf.manifest.preprocessing.input_range
    assert lo == pytest.approx(-0.485 / 0.229, abs=1e-4) and hi == pytest.approx(0.594 / 0.225, abs=1e-3)


@pytest.mark.parametrize(("args", "message"), [
    (["--labels", "a,b,c", "--scale", "1"], "the model has 2 outputs but 3 labels were given"),
    (["--labels", LABELS, "--scale", "1", "--input-size", "44"], "takes 32x32 images"),
    (["--labels", LABELS], "say how pixels are scaled with --scale"),
    (["--labels", LABELS, "--scale", "1", "--color-order", "GRAY"], "does not fit the model's 3-channel"),
    (["--labels", "a,a", "--scale", "1"], "two or more distinct names"),
    (["--labels", LABELS, "--scale", "1", "--positive-index", "2"], "--positive-index 2 is out of range"),
])
def test_bad_imports_give_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    code, text = _import(str(GOLDEN / "model_fp32.tflite"), *args, "-o", str(tmp_path / "b"))
    assert code == 2 and text.count("\n") == 1 and text.startswith("error: ") and message in text, text
    assert not (tmp_path / "b").exists()


def test_three_outputs_two_labels(tmp_path: Path) -> None:
    model = tmp_path / "three.onnx"
    tiny_onnx(model, outputs=3)
    code, text = _import(str(model), "--labels", LABELS, "--scale", "1/255", "-o", str(tmp_path / "b"))
    assert code == 2
    assert text == "error: the model has 3 outputs but 2 labels were given (Parasitized, Uninfected)\n"


@pytest.mark.parametrize("batch", [1, 3])
def test_an_onnx_model_with_a_fixed_batch_size_runs_any_batch(tmp_path: Path, batch: int) -> None:
    """Many exported models fix the batch at 1; onnxruntime refused the import's test batch of 2 with a
    traceback, and classify's batches would have failed the same way."""
    model = tmp_path / "fixed.onnx"
    w = tiny_onnx(model, batch=batch)
    code, text = _import(str(model), "--labels", LABELS, "--scale", "1/255", "-o", str(tmp_path / "b"))
    assert code == 0, text
    x = np.random.default_rng(2).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    z = (x / 255.0).mean(axis=(1, 2)) @ w
    want = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(load_classifier(tmp_path / "b").predict(x), want / want.sum(1, keepdims=True),
                               atol=1e-5)


def test_an_input_larger_than_a_bundle_takes_is_refused_before_running(tmp_path: Path) -> None:
    model = tmp_path / "huge.onnx"
    tiny_onnx(model, size=5000)  # a test batch of that size would take 600 MB of floats
    code, text = _import(str(model), "--labels", LABELS, "--scale", "1/255", "-o", str(tmp_path / "b"))
    assert code == 2 and "input is 5000x5000" in text and "at most 4096x4096" in text, text


def test_raw_uint8_model_contradicts_device_scaling(tmp_path: Path) -> None:
    """The golden int8 model takes raw uint8 pixels: feeding it pixel/255 would be silently wrong."""
    code, text = _import(str(GOLDEN / "model_int8.tflite"), "--labels", LABELS, "--scale", "1/255",
                         "-o", str(tmp_path / "b"))
    assert code == 2 and "takes raw uint8 pixels (0..255) but the preprocessing gives values 0..1" in text
    code, text = _import(str(GOLDEN / "model_int8.tflite"), "--labels", LABELS, "-o", str(tmp_path / "ok"))
    assert code == 0, text
    assert list(load_manifest(tmp_path / "ok").artifacts) == ["tflite_int8"]


def test_quantized_input_range_is_checked() -> None:
    spec = TensorSpec("x", [-1, 8, 8, 3], "int8", scale=1 / 255, zero_point=-128)  # real values 0..1
    check_input_values(spec, Preprocessing(input_size=(8, 8), scaling="device", scale=1 / 255))
    with pytest.raises(BundleError, match=r"quantized for values 0\.\.1 but the preprocessing gives 0\.\.25"):
        check_input_values(spec, Preprocessing(input_size=(8, 8)))
    check_input_values(TensorSpec("x", [1, 8, 8, 3], "float32"), Preprocessing(input_size=(8, 8)))


def test_manifest_preprocessing_fields() -> None:
    old = Preprocessing(**{"input_size": [64, 64], "input_range": [0.0, 255.0], "scaling": "in_model"})
    assert old.scale == 1.0 and old.mean == [0.0] and old.std == [1.0]
    with pytest.raises(BundleError, match="contradicts scale/mean/std"):
        Preprocessing(input_range=(0.0, 1.0))  # says [0, 1] but nothing scales the pixels
    with pytest.raises(BundleError, match='"in_model" passes raw pixels'):
        Preprocessing(scale=1 / 255)
    with pytest.raises(BundleError, match="mean has 2 values for 3 channel"):
        Preprocessing(scaling="device", scale=1 / 255, mean=[0.1, 0.2])
    sym = Preprocessing(scaling="device", scale=1 / 127.5, mean=[1.0])
    assert sym.input_range == (-1.0, 1.0)
    x = np.array([[[0, 127, 255]]], np.uint8)
    np.testing.assert_allclose(model_input(x, sym), [[[-1.0, 127 / 127.5 - 1, 1.0]]], atol=1e-6)
    assert model_input(x, old) is x


def test_imported_manifest_round_trips(tmp_path: Path) -> None:
    code, text = _import(str(GOLDEN / "model_fp32.tflite"), "--labels", LABELS, "--scale", "1/127.5",
                         "--mean", "1", "-o", str(tmp_path / "b"))
    assert code == 0, text
    data = json.loads((tmp_path / "b" / "manifest.json").read_text())
    pre = data["preprocessing"]
    assert pre["input_range"] == [-1.0, 1.0] and pre["scaling"] == "device"
    code, text = _import(str(GOLDEN / "model_fp32.tflite"), "--labels", LABELS, "--scale", "1",
                         "-o", str(tmp_path / "b"))
    assert code == 2 and "already holds a bundle" in text


def test_a_model_that_outputs_logits_is_imported_with_its_activation(tmp_path: Path) -> None:
    """The shipped default's int8 file ends at the logits: refused as not probabilities unless
    --logits names the activation; then it predicts exactly what the default bundle does."""
    from edgekit.device.runtime import default_bundle_dir

    model = default_bundle_dir() / "model_int8.tflite"
    code, text = _import(str(model), "--labels", LABELS, "-o", str(tmp_path / "no"))
    assert code == 2 and "--logits" in text
    code, text = _import(str(model), "--labels", LABELS, "--logits", "softmax", "-o", str(tmp_path / "ok"))
    assert code == 0, text
    art = load_manifest(tmp_path / "ok").artifacts["tflite_int8"]
    assert (art.output, art.activation) == ("logits", "softmax")
    x = np.random.default_rng(3).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    got = load_classifier(tmp_path / "ok", allow_unsigned=True).predict(x)
    want = load_classifier(default_bundle_dir(), "tflite_int8").predict(x)
    assert np.array_equal(got, want) and np.allclose(got.sum(axis=1), 1, atol=1e-5)


def test_train_and_export_extras_carry_the_runtime_they_validate_with():
    """`pip install ".[train]"` then `edgekit adapt` (int8 epochs measured on LiteRT), and `.[export]`
    then `edgekit export` (each artifact validated on the device's runtimes), need no device extra."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    for extra in ("train", "export"):
        names = {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in extras[extra]}
        assert "ai-edge-litert" in names, extra
    assert "onnxruntime" in {d.split(">")[0] for d in extras["export"]}
