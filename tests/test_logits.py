"""Quantized formats end at the logits (issue 11): the device applies the activation in float, so an
int8 model's probabilities are no longer capped at 255/256; bundles without the field still work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit.device.activation import probability_step, sigmoid, softmax, to_probabilities
from edgekit.errors import BundleError
from edgekit.manifest import Artifact, Thresholds, load_manifest
from edgekit.thresholds import band_report, choose_thresholds, rechoose_band

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden_bundle"
TOP_INT8 = 255 / 256  # the highest probability a uint8 output with scale 1/256 can hold


# ---------------------------------------------------------------- light: no TensorFlow


def test_activations_turn_logits_into_probabilities():
    z = np.array([[2.0, -1.0], [-800.0, 800.0], [0.0, 0.0]], np.float32)
    p = to_probabilities(z, "logits", "softmax")
    assert p.dtype == np.float32 and np.allclose(p.sum(axis=1), 1)
    assert p[0, 0] == pytest.approx(1 / (1 + np.exp(-3.0)), rel=1e-6) and p[1, 1] == 1.0  # no overflow
    np.testing.assert_allclose(softmax(z), p)
    assert sigmoid(np.array([0.0, 40.0, -40.0])).tolist() == pytest.approx([0.5, 1.0, 0.0], abs=1e-12)
    same = np.array([[0.25, 0.75]], np.float32)
    assert to_probabilities(same) is same  # probabilities pass through untouched
    with pytest.raises(BundleError):
        to_probabilities(z, "logits", None)


def test_probability_step_bounds_one_quantization_step():
    assert probability_step("probabilities", None, 1 / 256) == 1 / 256
    assert probability_step("logits", "softmax", 0.08) == pytest.approx(0.04)
    assert probability_step("logits", "softmax", None) == 0.0  # float output
    z = np.array([[1.3, -0.4]])
    dp = abs(softmax(z + [[0.08, -0.08]])[0, 0] - softmax(z)[0, 0])  # one step each, opposite ways
    assert 0 < dp <= probability_step("logits", "softmax", 0.08)


def test_manifest_records_and_checks_the_output_field(tmp_path):
    art = dict(format="tflite_int8", path="m.tflite", sha256="0" * 64, bytes=1, runtime="litert")
    assert Artifact.from_dict(art).output == "probabilities"  # old bundles: no field
    assert Artifact.from_dict({**art, "output": "logits", "activation": "sigmoid"}).activation == "sigmoid"
    for bad in ({"output": "logits"}, {"output": "scores"}, {"activation": "softmax"},
                {"output": "logits", "activation": "relu"}):
        with pytest.raises(BundleError):
            Artifact.from_dict({**art, **bad})
    bundle = tmp_path / "b"
    shutil.copytree(GOLDEN, bundle)
    data = json.loads((bundle / "manifest.json").read_text())
    data["artifacts"]["tflite_int8"]["output"] = "logits"  # no activation named
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="activation"):
        load_manifest(bundle)


def test_bundle_without_the_field_still_outputs_probabilities():
    from edgekit.device.runtime import load_classifier

    manifest = load_manifest(GOLDEN)
    assert "output" not in json.loads((GOLDEN / "manifest.json").read_text())["artifacts"]["tflite_int8"]
    clf = load_classifier(GOLDEN, "tflite_int8")
    assert clf.artifact.output == "probabilities" and clf.artifact.activation is None
    x = np.random.default_rng(0).integers(0, 256, (3, *manifest.preprocessing.input_size, 3), np.uint8)
    np.testing.assert_array_equal(clf.predict(x), clf.backend.run(x))  # nothing applied on top


def test_band_is_rechosen_on_other_outputs_keeping_the_cutoff():
    rng = np.random.default_rng(1)
    y = rng.random(2000) < 0.3
    keras_p = np.clip(np.where(y, 0.8, 0.2) + rng.normal(0, 0.25, 2000), 0, 1)
    first = choose_thresholds(y, keras_p)
    assert "Keras outputs" in first.source
    int8_p = np.minimum(np.round(keras_p * 256) / 256, TOP_INT8)  # a probability output, capped
    again = rechoose_band(first, y, int8_p, "tflite_int8")
    assert again.cutoff == first.cutoff and "band:" in again.source and "tflite_int8" in again.source
    assert again.source.startswith(first.source.split("; band")[0])
    rep = band_report(y, int8_p, again)
    assert rep["called_positive"] + rep["called_negative"] + rep["uncertain"] == len(y)
    assert rep["precision"] is None or rep["precision"] >= 0.99
    old = Thresholds(0.9, 0.1, "validation crops (n=5): cutoff by Youden J; band edges at 99% ...", 0.5)
    assert rechoose_band(old, y, int8_p, "x").source.startswith(
        "validation crops (n=5): cutoff by Youden J on Keras outputs; band:")


# ---------------------------------------------------------------- export (TensorFlow)


def _confident_tiny_model():
    """The bundle factory's tiny ResNet with a final Dense scaled up, so its float probabilities
    spread over (0, 1) and many exceed 255/256."""
    from bundle_factory import tiny_model

    model = tiny_model((32, 32))
    dense = next(layer for layer in reversed(model.layers) if layer.__class__.__name__ == "Dense")
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * 60.0, bias])
    return model


def test_int8_logits_reach_probabilities_above_255_over_256(tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    from edgekit import formats
    from edgekit.export.bundle import load_runner
    from edgekit.export.logits import logits_model
    from edgekit.export.tflite import convert_tflite

    model = _confident_tiny_model()
    rng = np.random.default_rng(0)
    calib = rng.integers(0, 256, (64, 32, 32, 3)).astype(np.float32)
    x = rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
    keras_p = model.predict(x.astype(np.float32), verbose=0)[:, 0]
    assert (keras_p > TOP_INT8).sum() >= 10, "the test model must be confident somewhere"

    head, activation = logits_model(model)
    assert activation == "softmax" and head.outputs[0].shape[-1] == 2
    fmt = formats.get("tflite_int8")
    convert_tflite(head, fmt, tmp_path / "logits.tflite", calib, True)
    convert_tflite(model, fmt, tmp_path / "probs.tflite", calib, True)
    p_logits = load_runner(fmt, tmp_path / "logits.tflite", output="logits", activation="softmax").predict(x)
    p_probs = load_runner(fmt, tmp_path / "probs.tflite").predict(x)
    assert p_probs[:, 0].max() <= TOP_INT8 + 1e-6  # the bug: int8 probabilities stop at 255/256
    confident = keras_p > TOP_INT8
    assert (p_logits[confident, 0] > TOP_INT8).mean() >= 0.9  # fixed: they reach the float model's range
    assert np.allclose(p_logits.sum(axis=1), 1, atol=1e-5)
    assert np.mean((p_logits[:, 0] >= 0.5) == (keras_p >= 0.5)) >= 0.95


def test_logits_model_cuts_a_dense_softmax_and_leaves_other_models_alone():
    keras = pytest.importorskip("keras")
    from edgekit.export.logits import logits_model

    inp = keras.Input((4,))
    dense = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inp, dense(inp))
    head, activation = logits_model(model)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    assert activation == "softmax"
    np.testing.assert_allclose(softmax(head.predict(x, verbose=0)), model.predict(x, verbose=0), atol=1e-6)
    plain = keras.Model(inp, keras.layers.Dense(2)(inp))
    assert logits_model(plain) == (plain, None)


def _random_bn_stats(model, seed: int = 0, gamma=(0.1, 2.0)):
    """Trained-looking statistics in every BatchNormalization (untrained ones are an identity)."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.get_weights()[0].shape[0]
            layer.set_weights([rng.uniform(*gamma, n), rng.normal(0, 0.5, n), rng.normal(0, 0.5, n),
                               rng.uniform(0.05, 3.0, n)])
    return model


def _assert_same_logits(model, folded):
    """Logits, not probabilities: a random model's softmax is flat and would hide a wrong fold."""
    from edgekit.export.logits import logits_model

    x = np.random.default_rng(1).integers(0, 256, (64, *model.input_shape[1:])).astype(np.float32)
    want = logits_model(model)[0].predict(x, verbose=0)
    got = logits_model(folded)[0].predict(x, verbose=0)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


def _pooled_model(recipe: str = "fast16p"):
    from edgekit.model import RECIPES, build_resnet

    return _random_bn_stats(build_resnet((32, 32, 3), **RECIPES[recipe]))


def _bns(model) -> int:
    import keras

    return sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def test_bn_after_a_max_pool_is_folded_into_the_conv_exactly():
    keras = pytest.importorskip("keras")
    from edgekit.export.logits import export_graph, fold_bn_before_pool

    model = _pooled_model()
    said = []
    folded = fold_bn_before_pool(model, said.append)
    assert folded is not model and len(said) == 1 and "folded into" in said[0]

    assert _bns(folded) == _bns(model) - 1
    pool = next(layer for layer in folded.layers if isinstance(layer, keras.layers.MaxPooling2D))
    assert pool.input._keras_history.operation.use_bias  # the conv before the pool carries the shift now
    _assert_same_logits(model, fold_bn_before_pool(model))
    head, activation = export_graph(model)
    assert activation == "softmax" and _bns(head) == _bns(model) - 3  # and the input BN, and the last one
    x = np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(softmax(head.predict(x, verbose=0)), model.predict(x, verbose=0), atol=1e-5)


def test_bn_fold_leaves_models_without_the_pattern_or_with_negative_scales_alone():
    pytest.importorskip("keras")
    from edgekit.export.logits import export_graph, fold_bn_before_pool
    from edgekit.model import RECIPES, build_resnet

    plain = _random_bn_stats(build_resnet((32, 32, 3), **RECIPES["fast16"]))  # no pool: no-op
    said = []
    assert fold_bn_before_pool(plain, said.append) is plain and said == []
    head, _ = export_graph(plain, said.append)  # nor the other folds: the default's graph as measured
    assert said == [] and _bns(head) == _bns(plain)
    negative = _random_bn_stats(_pooled_model(), gamma=(-1.0, 1.0))  # a max is no min
    assert fold_bn_before_pool(negative, said.append) is negative
    assert len(said) == 1 and "not folded" in said[0] and "negative scale" in said[0]


@pytest.mark.parametrize("padding, size", [("same", 32), ("same", 33), ("valid", 32)])
def test_bn_feeding_a_conv_is_folded_into_it_exactly_borders_included(padding, size):
    keras = pytest.importorskip("keras")
    from edgekit.export.logits import fold_bn_into_next_conv

    inp = keras.Input((size, size, 3))
    x = keras.layers.BatchNormalization()(keras.layers.Rescaling(1 / 255)(inp))
    x = keras.layers.Conv2D(8, 3, strides=2, padding=padding, use_bias=False)(x)
    model = _random_bn_stats(keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(x))))
    said = []
    folded = fold_bn_into_next_conv(model, said.append)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert len(said) == 1 and ("border map" in said[0]) == (padding == "same")
    _assert_same_logits(model, folded)
    relu = keras.Model(inp, keras.layers.Conv2D(8, 3)(keras.layers.ReLU()(
        keras.layers.BatchNormalization()(inp))))  # the pre-activation pattern: not a BN -> conv pair
    assert fold_bn_into_next_conv(relu) is relu


@pytest.mark.parametrize("head", ["gap", "flatten"])
def test_bn_before_relu_and_dense_is_folded_into_the_dense_exactly(head):
    keras = pytest.importorskip("keras")
    from edgekit.export.logits import fold_bn_into_dense

    def build():
        inp = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False)(inp)
        x = keras.layers.Activation("relu")(keras.layers.BatchNormalization()(x))
        x = keras.layers.GlobalAveragePooling2D()(x) if head == "gap" else keras.layers.Flatten()(
            keras.layers.AveragePooling2D(2)(x))  # 4x4x6: 16 kernel rows per channel
        return keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x))

    model = _random_bn_stats(build())
    said = []
    folded = fold_bn_into_dense(model, said.append)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert len(said) == 1 and "exact" in said[0]
    _assert_same_logits(model, folded)
    mixed = _random_bn_stats(build(), gamma=(-1.0, 1.0))  # relu(a x + b) with a < 0 is no a relu(...)
    assert fold_bn_into_dense(mixed, said.append) is mixed and "<= 0" in said[-1]
