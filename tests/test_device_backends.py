"""Backend adapters over injected fake interpreters: quantization, dequantization, batching."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.device.backends import (
    OnnxBackend,
    TFLiteBackend,
    dequantize,
    quantize_input,
    runtime_available,
    tflite_spec,
)
from edgekit.errors import BundleError


class FakeInterpreter:
    """Mimics LiteRT's Interpreter: output = per-image mean of the (quantized) input, as two
    uint8 'probabilities' (mean, 255 - mean) with scale 1/255."""

    def __init__(self, in_dtype=np.uint8, in_q=(0.5, 10), resizable=True, batch=1):
        self.in_dtype, self.in_q, self.resizable = in_dtype, in_q, resizable
        self.shape = [batch, 4, 4, 3]
        self.seen: list[np.ndarray] = []
        self.invocations = 0

    def allocate_tensors(self):
        pass

    def get_input_details(self):
        return [{"name": "image", "index": 0, "shape": np.array(self.shape), "shape_signature": [-1, 4, 4, 3],
                 "dtype": self.in_dtype, "quantization": self.in_q}]

    def get_output_details(self):
        return [{"name": "probs", "index": 1, "shape": np.array([self.shape[0], 2]),
                 "shape_signature": [-1, 2], "dtype": np.uint8, "quantization": (1 / 255, 0)}]

    def resize_tensor_input(self, index, shape):
        if not self.resizable:
            raise ValueError("fixed batch")
        self.shape = list(shape)

    def set_tensor(self, index, x):
        assert x.dtype == self.in_dtype and list(x.shape) == self.shape
        self.seen.append(x.copy())

    def invoke(self):
        self.invocations += 1

    def get_tensor(self, index):
        m = self.seen[-1].reshape(len(self.seen[-1]), -1).mean(axis=1).round().astype(np.uint8)
        return np.stack([m, 255 - m], axis=1)


def test_quantize_input_uses_scale_and_zero_point():
    x = np.array([[0, 1, 100, 255]], np.uint8)
    q = quantize_input(x, "uint8", 0.5, 10)
    assert q.dtype == np.uint8
    assert q.tolist() == [[10, 12, 210, 255]]  # 255 / 0.5 + 10 clips at 255
    q8 = quantize_input(x, "int8", 1.0, -128)
    assert q8.tolist() == [[-128, -127, -28, 127]]


def test_quantize_input_passes_raw_pixels_and_casts_floats():
    x = np.arange(12, dtype=np.uint8).reshape(1, 12)
    assert quantize_input(x, "uint8", 1.0, 0) is x
    f = quantize_input(x, "float32", None, None)
    assert f.dtype == np.float32 and f[0, 11] == 11.0


def test_dequantize():
    y = np.array([[0, 128, 255]], np.uint8)
    np.testing.assert_allclose(dequantize(y, 1 / 256, 0), [[0.0, 0.5, 255 / 256]])
    np.testing.assert_allclose(dequantize(np.array([[-128, 0]], np.int8), 0.1, -128), [[0.0, 12.8]])
    f = np.array([[0.25, 0.75]], np.float32)
    np.testing.assert_array_equal(dequantize(f, None, None), f)


def test_tflite_spec_reads_quantization():
    interp = FakeInterpreter()
    spec = tflite_spec(interp.get_input_details()[0])
    assert (spec.shape, spec.dtype, spec.scale, spec.zero_point) == ([-1, 4, 4, 3], "uint8", 0.5, 10)
    out = tflite_spec({"name": "y", "shape": [1, 2], "dtype": np.float32, "quantization": (0.0, 0)})
    assert out.scale is None and out.zero_point is None and out.shape == [1, 2]


def test_tflite_backend_quantizes_batches_and_dequantizes():
    interp = FakeInterpreter(in_q=(0.5, 10))
    backend = TFLiteBackend(interp)
    batch = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (0, 40, 100)])
    probs = backend.run(batch)
    assert interp.invocations == 1 and interp.shape[0] == 3  # one resized batch
    np.testing.assert_allclose(probs[:, 0], np.array([10, 90, 210]) / 255, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert probs.dtype == np.float32


def test_tflite_backend_falls_back_to_one_at_a_time_for_fixed_batch():
    interp = FakeInterpreter(in_q=(1.0, 0), resizable=False, batch=1)
    backend = TFLiteBackend(interp)
    probs = backend.run(np.stack([np.full((4, 4, 3), v, np.uint8) for v in (5, 6)]))
    assert interp.invocations == 2
    np.testing.assert_allclose(probs[:, 0], [5 / 255, 6 / 255], atol=1e-6)


def test_tflite_backend_refuses_fixed_batch_other_than_one():
    backend = TFLiteBackend(FakeInterpreter(resizable=False, batch=4))
    with pytest.raises(BundleError, match="fixed batch size of 4"):
        backend.run(np.zeros((2, 4, 4, 3), np.uint8))


class FakeSession:
    class T:
        def __init__(self, name, shape, type_):
            self.name, self.shape, self.type = name, shape, type_

    def get_inputs(self):
        return [self.T("image", ["N", 4, 4, 3], "tensor(float)")]

    def get_outputs(self):
        return [self.T("probs", ["N", 2], "tensor(float)")]

    def run(self, names, feeds):
        x = feeds["image"]
        assert x.dtype == np.float32
        m = x.reshape(len(x), -1).mean(axis=1) / 255
        return [np.stack([m, 1 - m], axis=1)]


def test_onnx_backend_feeds_float_pixels():
    backend = OnnxBackend(FakeSession())
    assert backend.inputs[0].shape == [-1, 4, 4, 3] and backend.inputs[0].dtype == "float32"
    probs = backend.run(np.full((2, 4, 4, 3), 51, np.uint8))
    np.testing.assert_allclose(probs[:, 0], [0.2, 0.2], atol=1e-6)


def test_runtime_available():
    assert runtime_available("onnxruntime")
    assert runtime_available("litert")
    assert not runtime_available("keras")


def _fake_tflite_runtime(monkeypatch, interpreter_cls):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # LiteRT "not installed"
    pkg, mod = types.ModuleType("tflite_runtime"), types.ModuleType("tflite_runtime.interpreter")
    mod.Interpreter = interpreter_cls
    pkg.interpreter = mod
    monkeypatch.setitem(sys.modules, "tflite_runtime", pkg)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", mod)


def test_tflite_runtime_fallback(monkeypatch, tmp_path):
    from edgekit.device.backends import open_tflite

    made = {}

    def interpreter(model_path, num_threads=None):
        made.update(path=model_path, threads=num_threads)
        return FakeInterpreter()

    _fake_tflite_runtime(monkeypatch, interpreter)
    backend = open_tflite(tmp_path / "m.tflite", threads=2)
    assert isinstance(backend, TFLiteBackend) and made == {"path": str(tmp_path / "m.tflite"), "threads": 2}


def test_tflite_runtime_too_old_is_a_clear_message(monkeypatch, tmp_path):
    from edgekit.device.backends import open_tflite

    def interpreter(model_path, num_threads=None):
        raise ValueError("Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'\nmore")

    _fake_tflite_runtime(monkeypatch, interpreter)
    with pytest.raises(BundleError, match="tflite-runtime cannot load .*'12'.*install ai-edge-litert"):
        open_tflite(tmp_path / "m.tflite")


def test_no_tflite_runtime_at_all(monkeypatch, tmp_path):
    import sys

    from edgekit.device.backends import open_tflite

    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(BundleError, match="no TFLite runtime installed"):
        open_tflite(tmp_path / "m.tflite")
