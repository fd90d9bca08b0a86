"""What to export and how strictly to check it: the format enum and the options dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


class Format(str, Enum):
    """One exported artifact; the value is its key in ``manifest.artifacts``."""

    TFLITE_FP32 = "tflite_fp32"
    TFLITE_FP16 = "tflite_fp16"
    TFLITE_DYNAMIC = "tflite_dynamic"
    TFLITE_INT8 = "tflite_int8"
    ONNX_FP32 = "onnx_fp32"
    ONNX_INT8 = "onnx_int8"

    @property
    def filename(self) -> str:
        family, precision = self.value.split("_", 1)
        return f"model_{precision}.{family}"

    @property
    def runtime(self) -> str:
        return "litert" if self.value.startswith("tflite") else "onnxruntime"

    @property
    def check(self) -> str:
        """How it is validated against Keras: ``exact`` (fp32), ``fp16``, or ``statistical``."""
        if self.value.endswith("fp32"):
            return "exact"
        if self.value.endswith("fp16"):
            return "fp16"
        return "statistical"

    @property
    def needs_calibration(self) -> bool:
        return self.value.endswith("int8")


ALL_FORMATS: tuple[Format, ...] = tuple(Format)


def parse_formats(text: str) -> tuple[Format, ...]:
    """``"tflite_int8,onnx_fp32"`` or ``"all"`` -> formats (ValueError names the valid ones)."""
    names = [t.strip() for t in text.replace(" ", ",").split(",") if t.strip()]
    if not names or names == ["all"]:
        return ALL_FORMATS
    valid = {f.value: f for f in Format}
    bad = [n for n in names if n not in valid]
    if bad:
        raise ValueError(f"unknown format(s) {', '.join(bad)}; choose from {', '.join(valid)} or all")
    return tuple(dict.fromkeys(valid[n] for n in names))


@dataclass(frozen=True)
class Bounds:
    """Acceptance bounds of an exported format against the Keras model on validation data."""

    fp32_max_abs: float = 1e-4
    fp16_max_abs: float = 1e-2
    int8_min_agreement: float = 0.99
    int8_max_accuracy_drop: float = 0.005  # 0.5 percentage points


@dataclass
class ExportOptions:
    """Everything ``export_bundle`` needs beyond the source model.

    For a run folder or bundle the calibration and validation images come from its split file;
    ``calibration``/``validation`` (image folder, ``.csv`` or ``.npy``) override them and are
    required for a bare ``.keras`` file, which also needs ``labels``.
    """

    formats: tuple[Format, ...] = ALL_FORMATS
    calibration_samples: int = 300
    max_validation: int | None = None  # cap on validation images (stratified); None = all
    allow_drop: bool = False
    bounds: Bounds = field(default_factory=Bounds)
    opset: int = 13
    seed: int = 0
    labels: list[str] | None = None
    calibration: Path | None = None
    validation: Path | None = None
    data_root: Path | None = None  # the split's data at another path
