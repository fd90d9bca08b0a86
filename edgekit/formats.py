# pyright: basic
"""The format table: every fact about a model format in one row, read by export, pack, the device
runtime, the benchmarks and the CLI help (Ultralytics' export-formats table, typed).

A row says which files the artifact holds (one or several, e.g. OpenVINO's ``.xml`` + ``.bin``), which
runtime runs it, its precision, whether it needs calibration data, how it is validated against
Keras (the bounds themselves are :class:`edgekit.export.options.Bounds`), whether ``edgekit pack``
keeps it by default, where the device prefers it, and the quantization scheme that export records
in the manifest. Adding a format is a row here plus its converter (``export/tflite.py`` for a TFLite
variant). Light: standard library only.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import BundleError


@dataclass(frozen=True)
class Runtime:
    """An inference engine: the modules that provide it, in order of preference."""

    name: str
    modules: tuple[str, ...]  # importable modules; the first importable one is used
    device: bool  # part of the light device runtime (never TensorFlow)
    install: str  # what to pip install

    def available(self) -> bool:
        """Whether one of its packages is installed (without importing it)."""
        return any(importlib.util.find_spec(m.split(".")[0]) is not None for m in self.modules)


RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        Runtime("litert", ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"), True,
                "ai-edge-litert (or tflite-runtime on older boards)"),
        Runtime("onnxruntime", ("onnxruntime",), True, "onnxruntime"),
        Runtime("keras", ("keras",), False, "edgekit[train]"),
    )
}

# How a format is validated against Keras: "reference" (it is Keras), "exact" (fp32 bound),
# "fp16" (fp16 bound), "statistical" (top-1 agreement and accuracy drop, for quantized formats).
CHECKS = ("reference", "exact", "fp16", "statistical")


@dataclass(frozen=True)
class FormatSpec:
    """One row of the format table; ``name`` is the key in ``manifest.artifacts``."""

    name: str
    family: str  # keras | tflite | onnx
    files: tuple[str, ...]  # inside the bundle; the first is the file the runtime opens
    runtime: str  # a key of RUNTIMES
    precision: str  # fp32 | fp16 | dynamic | int8
    check: str  # one of CHECKS
    calibration: bool  # needs calibration images
    packed: bool  # kept by `edgekit pack` by default (the device bundle)
    device_rank: int | None  # preference when the device picks a format (low first); None: never picked
    help: str
    quantization: dict[str, Any] = field(default_factory=dict)  # recorded in the manifest's artifact
    raw_pixels: bool = False  # image models take raw uint8 pixels (scale 1, zero point 0); export checks it

    @property
    def value(self) -> str:
        """The name (so a spec reads like the enum member it replaced)."""
        return self.name

    @property
    def filename(self) -> str:
        return self.files[0]

    @property
    def needs_calibration(self) -> bool:
        return self.calibration

    @property
    def exportable(self) -> bool:
        return self.family != "keras"

    def __str__(self) -> str:
        return self.name

    def __hash__(self) -> int:  # rows are keys (sets, dict.fromkeys); the name identifies a row
        return hash(self.name)


FORMATS: tuple[FormatSpec, ...] = (
    FormatSpec("keras", "keras", ("model.keras",), "keras", "fp32", "reference", False, False, None,
               "the trained Keras model (the reference every export is validated against)"),
    FormatSpec("tflite_fp32", "tflite", ("model_fp32.tflite",), "litert", "fp32", "exact", False, False, 2,
               "TFLite float32"),
    FormatSpec("tflite_fp16", "tflite", ("model_fp16.tflite",), "litert", "fp16", "fp16", False, False, 4,
               "TFLite with float16 weights",
               {"weights": "float16", "activations": "float32"}),
    FormatSpec("tflite_dynamic", "tflite", ("model_dynamic.tflite",), "litert", "dynamic", "statistical",
               False, False, 5, "TFLite dynamic-range: int8 weights, float activations",
               {"method": "dynamic range", "weights": "int8", "activations": "float32"}),
    FormatSpec("tflite_int8", "tflite", ("model_int8.tflite",), "litert", "int8", "statistical", True, True,
               0, "TFLite full integer, uint8 pixels in (the device default)",
               {"method": "post-training static", "weights": "int8 per-channel", "activations": "int8",
                "io": "uint8 for images (scale 1, zero point 0: raw pixels), float32 for features"},
               raw_pixels=True),
    FormatSpec("onnx_fp32", "onnx", ("model_fp32.onnx",), "onnxruntime", "fp32", "exact", False, False, 3,
               "ONNX float32 (tf2onnx)"),
    FormatSpec("onnx_int8", "onnx", ("model_int8.onnx",), "onnxruntime", "int8", "statistical", True, True, 1,
               "ONNX static QDQ int8 (onnxruntime)",
               {"method": "post-training static", "format": "QDQ", "activations": "uint8",
                "weights": "int8", "per_channel": False, "calibration": "MinMax"}),
)

BY_NAME: dict[str, FormatSpec] = {f.name: f for f in FORMATS}
EXPORT_FORMATS: tuple[FormatSpec, ...] = tuple(f for f in FORMATS if f.exportable)
DEVICE_ORDER: tuple[str, ...] = tuple(  # what the device picks first when no format is named
    f.name for f in sorted(FORMATS, key=lambda f: f.device_rank or 0) if f.device_rank is not None
)
PACKED: tuple[str, ...] = tuple(f for f in DEVICE_ORDER if BY_NAME[f].packed)
DEVICE_RUNTIMES: tuple[str, ...] = tuple(r.name for r in RUNTIMES.values() if r.device)


def get(name: str) -> FormatSpec:
    """The row of ``name``; BundleError names the known formats."""
    spec = BY_NAME.get(name)
    if spec is None:
        raise BundleError(f"unknown format {name!r}; known: {', '.join(BY_NAME)}")
    return spec


def parse(text: str, choices: tuple[FormatSpec, ...] = EXPORT_FORMATS) -> tuple[FormatSpec, ...]:
    """``"tflite_int8,onnx_fp32"`` or ``"all"`` -> rows (ValueError names the valid ones)."""
    names = [t.strip() for t in text.replace(" ", ",").split(",") if t.strip()]
    if not names or names == ["all"]:
        return choices
    valid = {f.name: f for f in choices}
    bad = [n for n in names if n not in valid]
    if bad:
        raise ValueError(f"unknown format(s) {', '.join(bad)}; choose from {', '.join(valid)} or all")
    return tuple(dict.fromkeys(valid[n] for n in names))


def names(specs: tuple[FormatSpec, ...] = EXPORT_FORMATS) -> str:
    """Comma-separated names, for help texts."""
    return ", ".join(f.name for f in specs)
