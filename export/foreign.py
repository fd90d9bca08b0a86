"""``edgekit import``: wrap a TFLite or ONNX model someone else trained into a bundle.

Nothing is converted: the file is copied as it is, and the manifest records what the device must
do to feed it (input size, colour order, resize method, ``(pixel * scale - mean) / std``) and its
labels. Every stated fact is checked against the model's own tensors (input shape and dtype, the
quantized input range, output count vs labels, outputs that are probabilities) by opening it in
the device runtime, through the very :class:`~edgekit.device.runtime.Classifier` that will run it.
Light: LiteRT or onnxruntime only, never TensorFlow.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit import __version__
from edgekit.device.activation import improbable_rows
from edgekit.device.probe import probe_model
from edgekit.errors import BundleError
from edgekit.manifest import (
    MANIFEST_NAME,
    MAX_MODEL_IN_MEMORY,
    Artifact,
    ImageSizes,
    Manifest,
    Preprocessing,
    TensorSpec,
    Thresholds,
    atomic_write_bytes,
)
from edgekit.manifest_schema import MAX_INPUT_SIDE
from edgekit.safefile import read_regular_bytes

RUNTIME_BY_SUFFIX = {".tflite": "litert", ".onnx": "onnxruntime"}
_ONNX_INT8_OPS = (b"QuantizeLinear", b"QLinearConv", b"QLinearMatMul", b"ConvInteger", b"MatMulInteger")


@dataclass
class ImportOptions:
    """What the user states about a foreign model; ``None`` means "read it from the model"."""

    labels: list[str]
    input_size: tuple[int, int] | None = None
    scale: float | None = None
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    resize: str = "area"
    color_order: str | None = None
    positive_index: int | None = None
    threshold: float = 0.5
    name: str | None = None
    logits: str | None = None  # the outputs are logits: the activation the device applies (softmax | sigmoid)
    image_sizes: ImageSizes | None = None  # of images like the training ones (--trained-on)


def _layout(shape: list[int]) -> tuple[int, int, int] | None:
    """(h, w, c) of a 4-d image input, NHWC or NCHW; None when neither fits."""
    if len(shape) != 4:
        return None
    if shape[3] in (1, 3):
        return shape[1], shape[2], shape[3]
    if shape[1] in (1, 3):
        return shape[2], shape[3], shape[1]
    return None


def _preprocessing(spec: TensorSpec, opts: ImportOptions) -> Preprocessing:
    dims = _layout([int(d) for d in spec.shape])
    if dims is None:
        raise BundleError(f"the model's input {spec.shape} is not an image (N, H, W, 1|3 or N, 1|3, H, W)")
    h, w, c = dims
    if opts.input_size is not None:
        want = opts.input_size
        if any(d not in (-1, x) for d, x in zip((h, w), want, strict=True)):
            raise BundleError(
                f"the model takes {h}x{w} images (input {spec.shape}) but --input-size says "
                f"{want[0]}x{want[1]}"
            )
        h, w = want
    if h < 1 or w < 1:
        raise BundleError(f"the model's input {spec.shape} has no fixed size: give --input-size HxW")
    if max(h, w) > MAX_INPUT_SIDE:  # refused before a test batch of that size is allocated
        raise BundleError(f"the model's input is {h}x{w}; edgekit bundles take at most "
                          f"{MAX_INPUT_SIDE}x{MAX_INPUT_SIDE}")
    color = opts.color_order or ("GRAY" if c == 1 else "RGB")
    if (color == "GRAY") != (c == 1):
        raise BundleError(f"--color-order {color} does not fit the model's {c}-channel input {spec.shape}")
    integer = np.dtype(spec.dtype).kind in "iu"
    raw = integer and (spec.scale or 1.0) == 1.0 and not spec.zero_point
    scale = opts.scale
    if scale is None:
        if not raw:
            raise BundleError(
                f"the model takes {spec.dtype} input: say how pixels are scaled with --scale "
                "(e.g. 1/255 for [0, 1], 1/127.5 with --mean 1 for [-1, 1], 1 for raw 0..255 pixels)"
            )
        scale = 1.0
    identity = scale == 1.0 and not any(opts.mean) and set(opts.std) == {1.0}
    return Preprocessing(
        input_size=(h, w), channels=c, color_order=color, resize=opts.resize,
        scaling="in_model" if identity else "device", scale=scale, mean=opts.mean, std=opts.std,
    )


def _format_name(runtime: str, data: bytes, backend) -> str:
    """The artifact key, from what the file holds (input dtype, quantized or half-precision tensors)."""
    integer_input = np.dtype(backend.inputs[0].dtype).kind in "iu"
    if runtime == "onnxruntime":
        return "onnx_int8" if integer_input or any(op in data for op in _ONNX_INT8_OPS) else "onnx_fp32"
    if integer_input:
        return "tflite_int8"
    dtypes = {np.dtype(t["dtype"]).name for t in backend.interpreter.get_tensor_details()}
    if dtypes & {"int8", "uint8"}:
        return "tflite_dynamic"
    return "tflite_fp16" if "float16" in dtypes else "tflite_fp32"


def _parameters(backend) -> int | None:
    """Weights of a TFLite graph: constant tensors its operators read (quantized int32 biases count;
    shape and axis constants do not). None for ONNX, whose initializers onnxruntime does not list."""
    if not hasattr(backend, "interpreter"):
        return None
    ops = [o for o in backend.interpreter._get_ops_details() if o["op_name"] != "DELEGATE"]
    produced = {t for o in ops for t in o["outputs"]}
    inputs = {d["index"] for d in backend.interpreter.get_input_details()}
    read = {t for o in ops for t in o["inputs"]} - produced - inputs
    total = 0
    for t in backend.interpreter.get_tensor_details():
        dtype, (scale, _) = np.dtype(t["dtype"]), t.get("quantization", (0.0, 0))
        if t["index"] in read and (dtype.kind == "f" or dtype.name in ("int8", "uint8") or scale):
            total += int(np.prod(t["shape"]))
    return total


def _check_outputs(backend, labels: list[str]) -> None:
    if len(backend.outputs) != 1:
        names = ", ".join(o.name for o in backend.outputs)
        raise BundleError(f"the model has {len(backend.outputs)} output tensors ({names}); edgekit needs one")
    n = int(backend.outputs[0].shape[-1]) if backend.outputs[0].shape else -1
    if n != -1 and n != len(labels):
        given = ", ".join(labels)
        raise BundleError(f"the model has {n} outputs but {len(labels)} labels were given ({given})")


def _probe(classifier, pre: Preprocessing) -> None:
    """Run random pixels through the device path: the outputs must be probabilities per label."""
    h, w = pre.input_size
    x = np.random.default_rng(0).integers(0, 256, (2, h, w, pre.channels), dtype=np.uint8)
    try:
        y = classifier.outputs(x)  # unchecked: the message below says what a sound model gives
    except (ValueError, RuntimeError) as exc:
        raise BundleError(f"the model fails on a {h}x{w}x{pre.channels} input: {exc}") from exc
    if y.shape != (2, len(classifier.labels)):
        raise BundleError(f"the model returns shape {list(y.shape)}, not one score per label")
    sums = y.sum(axis=1)
    if improbable_rows(y).any() or np.abs(sums - 1).max() > 0.02:
        raise BundleError(
            f"the model's outputs are not probabilities (a row sums to {sums[0]:.3g}, range "
            f"{y.min():.3g}..{y.max():.3g}); edgekit needs a softmax output, or logits declared with --logits"
        )


def import_model(model: str | Path, out: str | Path, opts: ImportOptions, force: bool = False) -> Manifest:
    """Check ``model`` against ``opts`` and write the bundle ``out``; returns its manifest."""
    from edgekit.device.backends import open_backend, runtime_available
    from edgekit.device.runtime import Classifier

    model, out = Path(model), Path(out)
    runtime = RUNTIME_BY_SUFFIX.get(model.suffix.lower())
    if runtime is None:
        raise BundleError(f"{model.name}: edgekit model import takes a .tflite or .onnx file")
    if len(opts.labels) < 2 or len(set(opts.labels)) != len(opts.labels):
        raise BundleError(f"--labels needs two or more distinct names, got {opts.labels}")
    if opts.positive_index is not None and not 0 <= opts.positive_index < len(opts.labels):
        raise BundleError(f"--positive-index {opts.positive_index} is out of range")
    if (out / MANIFEST_NAME).exists() and not force:
        raise BundleError(f"{out} already holds a bundle; choose another -o or pass --force")
    if not runtime_available(runtime):
        raise BundleError(f"{model.name} needs the {runtime} runtime, which is not installed")

    # the same input layer as a bundle's model: a regular file, bounded, read once; the crash probe
    # loads those very bytes in a child process before this process does
    content = read_regular_bytes(model, MAX_MODEL_IN_MEMORY, "model", BundleError)
    sha = hashlib.sha256(content).hexdigest()
    probe_model(runtime, model, sha, content)
    backend = open_backend(runtime, model, None, content)
    if len(backend.inputs) != 1:
        raise BundleError(f"the model has {len(backend.inputs)} inputs; edgekit needs one image input")
    _check_outputs(backend, opts.labels)
    pre = _preprocessing(backend.inputs[0], opts)
    fmt = _format_name(runtime, content, backend)
    artifact = Artifact(
        format=fmt, path=model.name, sha256=sha, bytes=len(content), runtime=runtime,
        inputs=backend.inputs, outputs=backend.outputs, status="ok",
        validation={"check": "imported", "note": "not validated by edgekit: a model brought as it is"},
        output="probabilities" if opts.logits is None else "logits", activation=opts.logits,
    )
    positive = None if opts.positive_index is None else opts.labels[opts.positive_index]
    manifest = Manifest(
        labels=list(opts.labels), preprocessing=pre, positive_label=positive,
        thresholds=Thresholds(positive=opts.threshold, negative=opts.threshold,
                              source="imported: not calibrated by edgekit"),
        artifacts={fmt: artifact}, name=opts.name or model.stem,
        training={"imported_from": str(model.resolve()), "parameters": _parameters(backend),
                  "imported_at": time.strftime("%Y-%m-%d %H:%M:%S %Z")},
        versions={"edgekit": __version__},
        image_sizes=opts.image_sizes,
    )
    classifier = Classifier(manifest, artifact, model.parent, backend)  # the device's own checks
    _probe(classifier, pre)
    out.mkdir(parents=True, exist_ok=True)
    if model.resolve() != (out / model.name).resolve():
        atomic_write_bytes(out / model.name, content)
    manifest.save(out)
    return manifest
