# pyright: basic
"""The bundle manifest: the one source of truth for preprocessing, labels, thresholds and artifacts.

A bundle (and a training run folder, which is the start of one) is a folder holding
``manifest.json``, ``labels.txt`` and model files. Every command that takes a bundle reads input
size, colour order, resize method, labels and thresholds from here and asks for none of them again.

This module is light (standard library only): the device runtime imports it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.digest import sha256
from edgekit.errors import BundleError, IntegrityError
from edgekit.manifest_schema import ACTIVATIONS, OUTPUTS, check_artifact_path, validate_manifest_data

SCHEMA = "edgekit.bundle/1"
MANIFEST_NAME = "manifest.json"
LABELS_NAME = "labels.txt"
SIGNATURE_NAME = "signature.json"  # written by edgekit.signing
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
RESIZE_METHODS = ("area", "bilinear", "nearest", "bicubic")
STAIN_METHODS = ("none", "od_standard")  # device/stain.py implements them
SCALINGS = ("in_model", "device")


@dataclass
class Preprocessing:
    """How a decoded image becomes a model input.

    The device decodes, converts colour order and resizes to uint8 pixels (``prepare()``); then the
    model input is ``(pixel * scale - mean) / std`` per channel (``model_input()``). With
    ``scaling == "in_model"`` (edgekit's own models) the graph scales itself and the device passes
    raw 0..255 pixels; ``"device"`` (imported models) applies ``scale``, ``mean`` and ``std``.
    ``input_range`` is the resulting range of model input values, checked against the model's tensors.
    """

    input_size: tuple[int, int] = (64, 64)  # (height, width)
    channels: int = 3
    color_order: str = "RGB"
    resize: str = "area"
    input_range: tuple[float, float] | None = None  # derived from scale/mean/std when absent
    scaling: str = "in_model"  # in_model: the model divides by 255 itself | device: see the docstring
    scale: float = 1.0
    mean: list[float] = field(default_factory=lambda: [0.0])  # one value, or one per channel
    std: list[float] = field(default_factory=lambda: [1.0])
    stain: str = "none"  # stain normalization of the resized crop (device/stain.py); "none" before it

    def __post_init__(self) -> None:
        if self.stain not in STAIN_METHODS:
            raise BundleError(f"unknown stain normalization {self.stain!r}; use one of {STAIN_METHODS}")
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        if self.resize not in RESIZE_METHODS:
            raise BundleError(f"unknown resize method {self.resize!r}; use one of {RESIZE_METHODS}")
        if self.channels not in (1, 3):
            raise BundleError(f"channels must be 1 or 3, not {self.channels}")
        if self.color_order not in ("RGB", "BGR", "GRAY"):
            raise BundleError(f"unknown color order {self.color_order!r}")
        if self.scaling not in SCALINGS:
            raise BundleError(f"unknown scaling {self.scaling!r}; use one of {SCALINGS}")
        self.scale = float(self.scale)
        self.mean = _per_channel("mean", self.mean, self.channels)
        self.std = _per_channel("std", self.std, self.channels)
        if self.scale <= 0 or min(self.std) <= 0:
            raise BundleError("preprocessing scale and std must be positive")
        if self.scaling == "in_model" and (self.scale != 1.0 or any(self.mean) or set(self.std) != {1.0}):
            raise BundleError('scaling "in_model" passes raw pixels: scale, mean and std must be 1, 0, 1')
        derived = self.derived_range()
        if self.input_range is None:
            self.input_range = derived
        self.input_range = (float(self.input_range[0]), float(self.input_range[1]))
        pairs = zip(self.input_range, derived, strict=True)
        if not all(abs(a - b) <= 1e-3 * max(1.0, abs(b)) for a, b in pairs):
            raise BundleError(
                f"input_range {list(self.input_range)} contradicts scale/mean/std, which give"
                f" {[round(v, 4) for v in derived]}"
            )

    def derived_range(self) -> tuple[float, float]:
        """The lowest and highest model input value over all channels, for pixels 0..255."""
        lows = [(0.0 * self.scale - m) / s for m, s in zip(self.mean, self.std, strict=True)]
        highs = [(255.0 * self.scale - m) / s for m, s in zip(self.mean, self.std, strict=True)]
        return (round(min(lows), 6), round(max(highs), 6))


def _per_channel(name: str, values: Any, channels: int) -> list[float]:
    vals = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    if len(vals) == 1:
        return vals
    if len(vals) != channels:
        raise BundleError(f"preprocessing {name} has {len(vals)} values for {channels} channel(s)")
    return vals


@dataclass
class Thresholds:
    """Cell-level decision on the positive-class probability, with an uncertain band.

    p >= positive -> positive label; p < negative -> negative label; in between -> "uncertain"
    (refer to microscopy). With negative == positive there is no band.
    """

    positive: float = 0.5
    negative: float = 0.5
    source: str = "default"  # how they were chosen, e.g. "validation patients, Youden J"
    cutoff: float | None = None  # the single yes/no cut for accuracy etc.; default: band midpoint

    def __post_init__(self) -> None:
        if self.cutoff is None:
            self.cutoff = (self.positive + self.negative) / 2
        if not 0.0 <= self.negative <= self.cutoff <= self.positive <= 1.0:
            raise BundleError(
                f"thresholds must satisfy 0 <= negative ({self.negative}) <= cutoff ({self.cutoff})"
                f" <= positive ({self.positive}) <= 1"
            )

    def decide(self, p_positive: float) -> str:
        if p_positive >= self.positive:
            return "positive"
        if p_positive < self.negative:
            return "negative"
        return "uncertain"


POSITIVE_EVIDENCE = ("point", "wilson_lower")  # what must reach positive_fraction for a positive call
REFUSED_CROPS = ("ignored", "unknown")  # how crops the gates or the guard refused weigh in the decision


@dataclass
class PatientRule:
    """Patient-level decision from the fraction of cells called parasitized (p >= ``Thresholds.cutoff``,
    the cut the rule was chosen with; the uncertain band only flags single cells), and the stop rule.

    ``positive_evidence`` says what must exceed ``positive_fraction`` for a positive call: ``point``
    (the called fraction itself, reaching it: manifests written before the field) or ``wilson_lower``
    (the lower Wilson 95% bound of the called fraction, above it: the evidence excludes the
    threshold, as the negative side's upper bound does). ``refused_crops``: ``ignored`` (old
    manifests) or ``unknown``: every crop the quality gates or the domain guard refused counts as a
    cell whose call is unknown, as not parasitized for the positive evidence and as parasitized for
    the negative evidence, so refused crops can only move a patient toward refer."""

    positive_fraction: float = 0.05  # positive evidence above this fraction of parasitized cells -> positive
    negative_fraction: float = 0.05  # Wilson upper 95% bound below this -> negative; else refer
    stop_cells: int = 1000
    source: str = "default"
    positive_evidence: str = "point"
    refused_crops: str = "ignored"

    def __post_init__(self) -> None:
        if self.positive_evidence not in POSITIVE_EVIDENCE:
            raise BundleError(f"patient_rule.positive_evidence must be one of {', '.join(POSITIVE_EVIDENCE)},"
                              f" not {self.positive_evidence!r}")
        if self.refused_crops not in REFUSED_CROPS:
            raise BundleError(f"patient_rule.refused_crops must be one of {', '.join(REFUSED_CROPS)},"
                              f" not {self.refused_crops!r}")

    def decide(self, k: int, n: int, refused: int = 0) -> str:
        """The patient from ``k`` cells called parasitized of ``n`` classified (and ``refused`` crops
        the gates or the guard refused): positive, negative or refer (to microscopy; also n = 0).
        The one function that decides a patient: every screen, summary and benchmark calls it."""
        from edgekit.metrics import wilson_interval  # numpy: only when a patient is decided

        if n == 0:
            return "refer"
        r = refused if self.refused_crops == "unknown" else 0
        m = n + r
        if self.positive_evidence == "wilson_lower":
            if wilson_interval(k, m)[0] > self.positive_fraction:
                return "positive"
        elif k / m >= self.positive_fraction:
            return "positive"
        if wilson_interval(k + r, m)[1] < self.negative_fraction:
            return "negative"
        return "refer"

    def describe(self) -> str:
        """The rule in words, for ``info`` and ``sessions show``."""
        if self.positive_evidence == "wilson_lower":
            pos = (f"positive when the lower 95% bound of the parasitized fraction is above "
                   f"{self.positive_fraction:.1%}")
        else:
            pos = f"positive at >= {self.positive_fraction:.1%} of cells"
        text = f"{pos}, negative when the upper 95% bound is below {self.negative_fraction:.1%}, else refer"
        if self.refused_crops == "unknown":
            text += "; refused crops count toward refer"
        return text


def default_positive_label(labels: Sequence[str]) -> str:
    """The positive class when none is named: ``Parasitized`` when present, else the last label."""
    return "Parasitized" if "Parasitized" in labels else labels[-1]


@dataclass(frozen=True)
class Decision:
    """Everything that decides "positive", in one place: the cell cutoff, the uncertain band, the
    patient rule and the positive label. Every screen (classify, field, screen, sessions, bench,
    evaluate, export validation) asks this object; a screening session stores :meth:`to_dict`, so
    its summary is recomputed with the rule it was decided with, never with a default.

    A cell *counts* as positive (parasitemia, the patient rule, the printed label) when its
    positive-class probability reaches ``cutoff``; the band ``[negative, positive)`` only flags
    single cells as "uncertain" for a human look, it does not change the count.
    """

    labels: tuple[str, ...]
    positive_label: str | None
    thresholds: Thresholds
    rule: PatientRule

    @property
    def positive_index(self) -> int | None:
        return None if self.positive_label is None else self.labels.index(self.positive_label)

    @property
    def counted_label(self) -> str:
        """The class a field counts: the positive label, or the last label of a model without one."""
        return self.positive_label or self.labels[-1]

    @property
    def counted_index(self) -> int:
        return self.labels.index(self.counted_label)

    @property
    def cutoff(self) -> float:
        return float(self.thresholds.cutoff)  # type: ignore[arg-type]  # set by Thresholds.__post_init__

    def counted(self, p_positive: Any) -> Any:
        """Whether cells count as positive (parasitemia, patient rule, printed label): a probability
        gives a bool, a numpy array of them a bool array (numpy is never imported here)."""
        called = p_positive >= self.cutoff
        return called if getattr(called, "ndim", 0) else bool(called)

    def is_counted_positive(self, p_positive: float) -> bool:
        """True when one cell counts as positive (:meth:`counted`)."""
        return self.counted(p_positive)

    def cell_call(self, p_positive: float) -> str:
        """positive | negative | uncertain (the band, for a human look)."""
        return self.thresholds.decide(p_positive)

    def cell_label_index(self, probabilities: Sequence[float]) -> int:
        """The label printed for one crop: with a positive label and two classes, the positive label
        exactly when the cell counts as positive (so no cell is printed negative yet counted
        positive); the most probable label otherwise."""
        pos = self.positive_index
        if pos is not None and len(probabilities) == 2:
            return pos if self.is_counted_positive(float(probabilities[pos])) else 1 - pos
        return max(range(len(probabilities)), key=lambda i: probabilities[i])

    def patient_decision(self, k: int, n: int, refused: int = 0) -> str:
        """The patient from k counted cells of n and ``refused`` crops (:meth:`PatientRule.decide`)."""
        return self.rule.decide(k, n, refused)

    def check_decides_patients(self) -> None:
        """BundleError for a model that names no positive class: it classifies cells, but a patient
        decision (``screen``, ``serve``) would be taken on whichever class came last."""
        if self.positive_label is None:
            raise BundleError("the bundle names no positive class, so it cannot decide a patient (it can "
                              "still `classify` cells); import the model again with --positive-index")

    def to_dict(self) -> dict[str, Any]:
        """What a screening session stores: enough to redo its summary exactly."""
        return {"labels": list(self.labels), "positive_label": self.positive_label,
                "thresholds": asdict(self.thresholds), "patient_rule": asdict(self.rule)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decision:
        try:
            return cls(tuple(d["labels"]), d.get("positive_label"), Thresholds(**d["thresholds"]),
                       PatientRule(**d["patient_rule"]))
        except (KeyError, TypeError) as exc:
            raise BundleError(f"malformed decision record: {exc}") from exc


@dataclass
class TensorSpec:
    """A model input or output as recorded in the manifest: name, shape, dtype, quantization."""

    name: str
    shape: list[int]
    dtype: str
    scale: float | None = None  # quantization, when the tensor is quantized
    zero_point: int | None = None


@dataclass
class Artifact:
    """One model file of the bundle."""

    format: str  # keras | tflite_fp32 | tflite_fp16 | tflite_dynamic | tflite_int8 | onnx_fp32 ...
    path: str  # relative to the bundle folder
    sha256: str
    bytes: int
    runtime: str  # keras | litert | onnxruntime
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    status: str = "ok"  # ok | failed_validation | export_failed
    validation: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)  # the scheme (edgekit.formats), if any
    extra_files: dict[str, str] = field(default_factory=dict)  # further files of the format: path -> sha256
    output: str = "probabilities"  # probabilities | logits (see OUTPUTS); absent in old bundles
    activation: str | None = None  # with logits: the activation the device applies (softmax | sigmoid)

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise BundleError(f"artifact {self.format}: unknown output {self.output!r}; use one of {OUTPUTS}")
        if (self.output == "logits") != (self.activation is not None) or (
                self.activation is not None and self.activation not in ACTIVATIONS):
            raise BundleError(f"artifact {self.format}: output logits needs an activation in {ACTIVATIONS} "
                              f"(and probabilities none), not {self.activation!r}")

    @property
    def files(self) -> dict[str, str]:
        """Every file of the artifact (relative path -> sha256), the one the runtime opens first."""
        return {self.path: self.sha256, **self.extra_files}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Artifact:
        d = dict(d)
        d["inputs"] = [TensorSpec(**t) for t in d.get("inputs", [])]
        d["outputs"] = [TensorSpec(**t) for t in d.get("outputs", [])]
        return cls(**d)


# What a site gate bounds, and how: "max" (the measured value may not exceed the bound) or "min".
GATE_BOUNDS: dict[str, str] = {"parasitemia_error": "max", "auc": "min", "sensitivity_at_specificity": "min"}
GATE_NAMES = {"parasitemia_error": "whole-field parasitemia error (points)", "auc": "cell AUC",
              "sensitivity_at_specificity": "sensitivity at specificity >= 99.5%"}
# How `edgekit adapt` may choose a site's cutoff (edgekit.adapt; the chosen one is named in
# thresholds.source). The field ones are chosen on whole validation fields and need their images.
SITE_CUTOFFS = ("auto", "count", "field-count", "field-error", "youden")
DEFAULT_GATE_BOUNDS: dict[str, float] = {"parasitemia_error": 1.0, "auc": 0.97}


@dataclass
class Gate:
    """What a site bundle measured through its exported model on fields its adaptation never touched
    (``test_fields``), and the bounds those numbers must meet before its guard may vouch for any
    result (``edgekit adapt``). A failed gate makes every field and session verdict "not validated",
    with the numbers."""

    bounds: dict[str, float]
    measured: dict[str, float | None]
    test_fields: list[str] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.bounds) - set(GATE_BOUNDS))
        if unknown:
            raise BundleError(f"gate: unknown bound(s) {', '.join(unknown)}; known: {', '.join(GATE_BOUNDS)}")
        numbers = [*self.bounds.values(), *(v for v in self.measured.values() if v is not None)]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            raise BundleError("gate: bounds and measured values must be numbers")
        if not all(math.isfinite(v) for v in self.bounds.values()):  # every number meets a NaN or inf bound
            raise BundleError(f"gate: bounds must be finite numbers, not {self.bounds}")

    def failures(self) -> list[str]:
        """One phrase per bound the measured numbers miss (a number not measured misses its bound)."""
        out = []
        for key, bound in sorted(self.bounds.items()):
            value = self.measured.get(key)
            if value is None or not math.isfinite(value):
                out.append(f"{GATE_NAMES[key]} not measured")
            elif (value > bound) if GATE_BOUNDS[key] == "max" else (value < bound):
                out.append(f"{GATE_NAMES[key]} {value:.3g}{self._mean_of(key)} "
                           f"{'>' if GATE_BOUNDS[key] == 'max' else '<'} {bound:g}")
        return out

    def _mean_of(self, key: str) -> str:
        """For a number held by a bound of its interval (the estimate recorded beside it as
        ``KEY_mean`` or ``KEY_estimate``), say so."""
        mean, estimate = self.measured.get(f"{key}_mean"), self.measured.get(f"{key}_estimate")
        if mean is not None:
            return f" (upper 95% bound; mean {mean:.3g})"
        return "" if estimate is None else f" (lower 95% bound; estimate {estimate:.3g})"

    @property
    def passed(self) -> bool:
        return not self.failures()

    def summary(self) -> str:
        """One line: passed or failed, with the numbers."""
        fails = self.failures()
        n = len(self.test_fields)
        if fails:
            return f"site gate FAILED on {n} test fields: {'; '.join(fails)}"
        sign = {"max": "<=", "min": ">="}
        shown = ", ".join(f"{GATE_NAMES[k]} {self.measured[k]:.3g}{self._mean_of(k)} "
                          f"({sign[GATE_BOUNDS[k]]} {b:g})" for k, b in sorted(self.bounds.items()))
        return f"site gate passed on {n} test fields: {shown}"


@dataclass
class Domain:
    """What the model's training cells looked like, for the domain guard (``edgekit.device.domain``).

    Each crop's feature vector (``features``: size, shape, Lab colour of its stained pixels) is
    compared with the training cells' ``mean`` and inverse covariance (a Mahalanobis distance); a
    field or session whose median distance exceeds ``field_threshold`` / ``session_threshold`` is
    out of domain. ``min_chroma`` and ``max_border_lit`` reject single crops that are plainly not
    a stained cell on black (a grayscale copy, noise, a whole field). Fitted by ``edgekit domain
    fit``; ``source`` says on what and how the thresholds were chosen.
    """

    features: list[str]
    mean: list[float]
    inv_cov: list[list[float]]
    field_threshold: float
    session_threshold: float
    min_cells: int = 5  # a field or session with fewer measurable cells is not vouched for
    min_chroma: float = 0.0  # median Lab chroma of a crop's cell pixels under this: a grayscale image
    max_border_lit: float = 1.0  # fraction of a crop's outer frame lit above this: not a cell on black
    max_crop_distance: float | None = None  # a single crop farther than this is not a cell like them
    n: int = 0  # training crops the statistics come from
    quantiles: dict[str, list[float]] = field(default_factory=dict)  # per feature: 1st, 50th, 99th
    source: str = ""
    gate: Gate | None = None  # a site bundle's own test: the guard vouches only when it passed
    # the drift view's "watch" level (``edgekit.device.drift``): the highest session score seen on the
    # fit's validation data; None (bundles fitted before it existed): sessions are only ok or drifted
    session_warn: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.gate, dict):
            self.gate = Gate(**self.gate)
        k = len(self.features)
        if k == 0 or len(self.mean) != k or len(self.inv_cov) != k or any(len(r) != k for r in self.inv_cov):
            raise BundleError(f"domain: mean and inv_cov must match its {k} features")
        numbers = [self.field_threshold, self.session_threshold, self.min_chroma, self.max_border_lit,
                   *(v for v in (self.max_crop_distance, self.session_warn) if v is not None), *self.mean,
                   *(v for row in self.inv_cov for v in row)]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
            # an infinite threshold (or a NaN floor) would pass every cell: the guard would vouch for anything
            raise BundleError("domain: its statistics and thresholds must be finite numbers")
        if not (self.field_threshold > 0 and self.session_threshold > 0):
            raise BundleError("domain: thresholds must be positive")
        if self.session_warn is not None and not 0 < self.session_warn <= self.session_threshold:
            raise BundleError("domain: session_warn must be positive and at most the session threshold")


@dataclass
class ImageSizes:
    """The sizes of the images the model was trained on, for the size check
    (:mod:`edgekit.device.sizes`, which owns the rule and fits these): ``min_side`` the 1st
    percentile of their short sides, ``max_side`` the 99th of their long sides, ``max_aspect`` the
    99th of long/short, all in pixels of the files as given. Written by ``edgekit train`` from its
    train part; a brought bundle may declare them; absent: images of any size are classified."""

    min_side: float
    max_side: float
    max_aspect: float
    n: int = 0  # training images they were measured on
    source: str = ""

    def __post_init__(self) -> None:
        nums = (self.min_side, self.max_side, self.max_aspect)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in nums):
            raise BundleError("image_sizes: min_side, max_side and max_aspect must be finite numbers")
        if not (0 < self.min_side <= self.max_side and self.max_aspect >= 1):
            raise BundleError("image_sizes: need 0 < min_side <= max_side and max_aspect >= 1")


@dataclass
class Manifest:
    """A bundle's ``manifest.json``: labels, preprocessing, decision rules, model files and records."""

    labels: list[str]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    positive_label: str | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    patient_rule: PatientRule = field(default_factory=PatientRule)
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    name: str = "model"
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    domain: Domain | None = None  # training-cell statistics for the domain guard; None: not fitted
    release: str | None = None  # release version (dotted integers), stamped by `edgekit sign`; signed
    # a site's focus rule (edgekit.device.field.focus.FocusRule: floor, marks, source, radius, reference),
    # set by `edgekit site adapt` on the site's fields; None: the floor every microscope shares
    focus: dict[str, Any] | None = None
    image_sizes: ImageSizes | None = None  # what the model was trained on; None: not recorded
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        if len(self.labels) < 2:
            raise BundleError("a manifest needs at least two labels")
        if self.positive_label is not None and self.positive_label not in self.labels:
            raise BundleError(f"positive label {self.positive_label!r} is not in {self.labels}")

    @property
    def positive_index(self) -> int | None:
        return None if self.positive_label is None else self.labels.index(self.positive_label)

    @property
    def decision(self) -> Decision:
        """The one object that decides "positive" for this model (see :class:`Decision`)."""
        return Decision(tuple(self.labels), self.positive_label, self.thresholds, self.patient_rule)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        validate_manifest_data(d)
        if d.get("schema", SCHEMA) != SCHEMA:
            raise BundleError(f"unsupported manifest schema {d.get('schema')!r} (want {SCHEMA})")
        try:
            return cls(
                labels=list(d["labels"]),
                preprocessing=Preprocessing(**d.get("preprocessing", {})),
                positive_label=d.get("positive_label"),
                thresholds=Thresholds(**d.get("thresholds", {})),
                patient_rule=PatientRule(**d.get("patient_rule", {})),
                artifacts={k: Artifact.from_dict(v) for k, v in d.get("artifacts", {}).items()},
                name=d.get("name", "model"),
                training=d.get("training", {}),
                evaluation=d.get("evaluation", {}),
                versions=d.get("versions", {}),
                domain=Domain(**d["domain"]) if d.get("domain") else None,
                release=d.get("release"),
                focus=d.get("focus"),
                image_sizes=ImageSizes(**d["image_sizes"]) if d.get("image_sizes") else None,
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BundleError(f"malformed manifest: {exc}") from exc

    def save(self, folder: str | os.PathLike) -> Path:
        """Write manifest.json and labels.txt atomically. A signature of the previous manifest no longer
        matches, so it is removed (sign again with ``edgekit sign``)."""
        folder = Path(folder)
        (folder / SIGNATURE_NAME).unlink(missing_ok=True)
        atomic_write_text(folder / LABELS_NAME, "\n".join(self.labels) + "\n")
        path = folder / MANIFEST_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, default=json_default) + "\n")
        return path


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for numpy values and paths (duck-typed: no numpy import here)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def manifest_path(folder: str | os.PathLike) -> Path:
    """``folder/manifest.json`` (or ``folder`` itself when it names the manifest file)."""
    folder = Path(folder)
    if not folder.exists():
        raise BundleError(f"bundle not found: {folder}")
    if folder.is_dir():
        return folder / MANIFEST_NAME
    if folder.suffix.lower() != ".json":
        raise BundleError(f"{folder} is not a bundle: give its folder (with {MANIFEST_NAME}); "
                          "a bare model file becomes a bundle with `edgekit model import`")
    return folder


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise BundleError(f"malformed manifest: key {k!r} appears twice")
        d[k] = v
    return d


def read_manifest_data(folder: str | os.PathLike) -> dict[str, Any]:
    """The parsed JSON of a bundle's manifest (a regular file of at most 8 MB, no duplicate keys), not yet
    validated. What a signature covers and what :meth:`Manifest.from_dict` reads. NaN is allowed here
    (training records may hold one); the fields edgekit decides with must be finite numbers."""
    from edgekit.safefile import NotRegularFile, read_regular_bytes

    path = manifest_path(folder)
    try:
        raw = read_regular_bytes(path, MAX_MANIFEST_BYTES, "manifest")
    except NotRegularFile as exc:
        if not path.exists():
            raise BundleError(f"no {MANIFEST_NAME} in {folder}: not an edgekit bundle or run folder") from exc
        raise BundleError(str(exc)) from exc
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 or JSON, a 5000-digit number
        raise BundleError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"malformed manifest {path}: not a JSON object")
    return data


def load_manifest(folder: str | os.PathLike) -> Manifest:
    """Read a bundle's manifest, with one clear error if it is missing or malformed."""
    return Manifest.from_dict(read_manifest_data(folder))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def artifact_path(folder: str | os.PathLike, artifact: Artifact, rel: str | None = None) -> Path:
    """The artifact's file (or its further file ``rel``), which must resolve (symlinks followed) inside
    the bundle folder."""
    folder = Path(folder)
    rel = artifact.path if rel is None else rel
    check_artifact_path(rel, f"artifacts.{artifact.format}.path")
    path = folder / rel
    if not path.resolve().is_relative_to(folder.resolve()):
        raise BundleError(f"artifact {artifact.format} ({rel}) resolves outside the bundle folder "
                          f"{folder}; refusing to load it")
    return path


MAX_MODEL_IN_MEMORY = 256 << 20  # larger single-file models are loaded from their path after the check


def read_verified_artifact(folder: str | os.PathLike, artifact: Artifact) -> tuple[Path, bytes | None]:
    """Check each of the artifact's files stays in the bundle, is a regular file (the first one of the
    recorded size) and matches its sha256 in the manifest. Returns the (first) path and, for a
    single-file model of at most 256 MB, the very bytes that were hashed: loading those instead of
    the path leaves no window in which the file could be swapped after its check."""
    from edgekit.safefile import NotRegularFile, open_regular

    content: bytes | None = None
    first = artifact_path(folder, artifact)
    for rel, want in artifact.files.items():
        path = first if rel == artifact.path else artifact_path(folder, artifact, rel)
        try:
            f = open_regular(path, f"artifact {artifact.format}")
        except NotRegularFile as exc:
            raise BundleError(f"artifact {artifact.format} missing or unusable: {exc}") from exc
        keep = rel == artifact.path and len(artifact.files) == 1 and artifact.bytes <= MAX_MODEL_IN_MEMORY
        blocks: list[bytes] = []
        with f:
            size = os.fstat(f.fileno()).st_size
            if rel == artifact.path and size != artifact.bytes:
                raise IntegrityError(f"{path} fails its sha256 check (it has {size} bytes, the manifest "
                                     f"records {artifact.bytes}): the model file is corrupt or was tampered "
                                     "with; refusing to load it")
            h = sha256()
            while block := f.read(1 << 20):
                h.update(block)
                if keep:
                    blocks.append(block)
        digest = h.hexdigest()
        if digest != want:
            raise IntegrityError(
                f"{path} fails its sha256 check (manifest {want[:12]}…, file {digest[:12]}…):"
                " the model file is corrupt or was tampered with; refusing to load it"
            )
        if keep:
            content = b"".join(blocks)
    return first, content


def verify_artifact(folder: str | os.PathLike, artifact: Artifact) -> Path:
    """:func:`read_verified_artifact`, for callers that load the model by its path."""
    return read_verified_artifact(folder, artifact)[0]


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import tempfile  # deferred: the device path reads manifests, rarely writes them (cold start)

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a bundle must be readable like any file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
