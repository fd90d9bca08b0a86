"""Keras -> TFLite (fp32, fp16, dynamic range, full int8) and a LiteRT runner for validation.

One small converter setting per format; all go through ``TFLiteConverter.from_keras_model``
(``from_concrete_functions`` on a Keras 3 model gives a file that outputs NaN, see issue 3).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from edgekit.export.options import Format


def _fp32(converter, calib: np.ndarray | None, image_input: bool) -> None:
    pass


def _fp16(converter, calib: np.ndarray | None, image_input: bool) -> None:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


def _dynamic(converter, calib: np.ndarray | None, image_input: bool) -> None:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]


def _int8(converter, calib: np.ndarray | None, image_input: bool) -> None:
    import tensorflow as tf

    if calib is None or len(calib) == 0:
        raise ValueError("full-integer quantization needs calibration data")
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: _representative(calib, image_input)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    # Images: uint8 in, so the device feeds raw pixels; features stay float at the boundary.
    io_type = tf.uint8 if image_input else tf.float32
    converter.inference_input_type = io_type
    converter.inference_output_type = io_type


def _representative(calib: np.ndarray, image_input: bool) -> Iterator[list[np.ndarray]]:
    for i in range(len(calib)):
        x = calib[i : i + 1].astype(np.float32)
        if image_input and i == 0:
            # One pixel at 0 and one at 255 pin the input range to [0, 255] -> scale 1, zero point 0,
            # i.e. the quantized input *is* the raw uint8 pixel.
            x[0, 0, 0, :], x[0, 0, -1, :] = 0.0, 255.0
        yield [x]


CONFIGURE: dict[str, Callable] = {  # format name (edgekit.formats) -> its converter settings
    "tflite_fp32": _fp32,
    "tflite_fp16": _fp16,
    "tflite_dynamic": _dynamic,
    "tflite_int8": _int8,
}


def convert_tflite(model, fmt: Format, path: Path, calib: np.ndarray | None, image_input: bool) -> None:
    """Convert a Keras model to ``path`` in format ``fmt``."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    CONFIGURE[fmt.name](converter, calib, image_input)
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints its SavedModel signature listing
        flatbuffer = converter.convert()
    Path(path).write_bytes(flatbuffer)
