"""What to export and how strictly to check it: the formats (rows of :mod:`edgekit.formats`) and the
options dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgekit.formats import EXPORT_FORMATS, FormatSpec, parse

Format = FormatSpec  # a row of the format table (edgekit.formats); the name export has always used
ALL_FORMATS: tuple[Format, ...] = EXPORT_FORMATS


def parse_formats(text: str) -> tuple[Format, ...]:
    """``"tflite_int8,onnx_fp32"`` or ``"all"`` -> formats (ValueError names the valid ones)."""
    return parse(text, EXPORT_FORMATS)


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
