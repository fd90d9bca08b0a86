"""Keras -> ONNX fp32 (tf2onnx) and ONNX int8 (onnxruntime static QDQ), plus an onnxruntime runner.

int8 scheme, chosen by measurement on the seed-sized ResNet (1 thread, see issue 3): QDQ with uint8
activations and int8 per-tensor weights ran 7.1 ms vs 17.5 ms for fp32; per-channel int8-activation
QDQ (19.7 ms) and dynamic quantization (24-91 ms) were slower than fp32.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.manifest import Manifest

CALIBRATION_BATCH = 16


def onnx_metadata(manifest: Manifest, activation: str | None = None) -> dict[str, str]:
    """What a plain ONNX consumer needs to use the file without the manifest (``activation``: the
    file outputs logits, to which that activation must be applied)."""
    p = manifest.preprocessing
    return {
        "output": "logits" if activation else "probabilities",
        **({"activation": activation} if activation else {}),
        "labels": json.dumps(manifest.labels),
        "positive_label": manifest.positive_label or "",
        "input_size": json.dumps(list(p.input_size)),
        "channels": str(p.channels),
        "color_order": p.color_order,
        "resize": p.resize,
        "input_range": json.dumps(list(p.input_range)),
        "scaling": p.scaling,
        "producer": "edgekit",
    }


def _save_with_metadata(model_proto, path: Path, metadata: dict[str, str]) -> None:
    import onnx

    del model_proto.metadata_props[:]
    onnx.helper.set_model_props(model_proto, metadata)
    onnx.save(model_proto, str(path))


def export_onnx_fp32(model, path: Path, metadata: dict[str, str], opset: int = 13,
                     output_name: str | None = None) -> None:
    """Convert a Keras model with tf2onnx (explicit input signature, batch dimension free).

    ``from_function`` rather than ``from_keras``: the latter looks up Keras 3 output tensor names and
    fails on Sequential models; the output is renamed to ``output_name`` afterwards.
    """
    import tensorflow as tf
    import tf2onnx

    inp = model.inputs[0]
    name = (getattr(inp, "name", None) or "input").split(":")[0]
    signature = (tf.TensorSpec((None, *inp.shape[1:]), tf.float32, name=name),)
    fn = tf.function(lambda x: model(x, training=False))
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=signature, opset=opset)
    if output_name:
        _rename_output(proto.graph, proto.graph.output[0].name, output_name)
    _save_with_metadata(proto, Path(path), metadata)


def _rename_output(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    graph.output[0].name = new


def output_scale(path: Path) -> float | None:
    """The quantization scale of a QDQ graph's output (its last DequantizeLinear), None when the
    output is not quantized there: what one int8 step of the output is worth, for the record."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    out = graph.output[0].name
    node = next((n for n in graph.node if out in n.output), None)
    if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 2:
        return None
    init = next((t for t in graph.initializer if t.name == node.input[1]), None)
    return None if init is None else float(numpy_helper.to_array(init).ravel()[0])


class _Reader:
    """An onnxruntime CalibrationDataReader (duck-typed: ``get_next``) over an array, in small batches."""

    def __init__(self, input_name: str, x: np.ndarray) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = (
            {input_name: x[i : i + CALIBRATION_BATCH].astype(np.float32)}
            for i in range(0, len(x), CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_onnx_int8(fp32_path: Path, path: Path, calib: np.ndarray, metadata: dict[str, str],
                       scheme: dict[str, Any]) -> None:
    """Static quantization calibrated on ``calib`` (float32 [0, 255] pixels or features), with the
    scheme of the format table (``edgekit.formats``; recorded in the manifest as it is used here)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if calib is None or len(calib) == 0:
        raise ValueError("static int8 quantization needs calibration data")
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    quantize_static(
        str(fp32_path),
        str(path),
        _Reader(input_name, calib),
        quant_format=QuantFormat[scheme["format"]],
        activation_type=types[scheme["activations"]],
        weight_type=types[scheme["weights"]],
        per_channel=bool(scheme["per_channel"]),
        calibrate_method=CalibrationMethod[scheme["calibration"]],
        # no CalibMaxIntermediateOutputs: onnxruntime's MinMax calibrator drops the ranges collected so
        # far each time that many batches are held (2,000 crops in batches of 16 calibrated on the last
        # 5 batches; 500 crops on none: "No data is collected"); it keeps only per-batch min/max anyway
    )
    _save_with_metadata(onnx.load(str(path)), Path(path), metadata)
