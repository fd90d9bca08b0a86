# pyright: basic
"""Load a bundle on the device and classify crops: format resolution, integrity and input checks.

Everything the runtime needs (input size, labels, thresholds, which model file) comes from the
bundle's manifest; the model file's sha256 is checked before it is loaded, and the model's real
input shape is checked against the manifest's preprocessing after.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.device.activation import improbable_rows, to_probabilities
from edgekit.device.backends import Backend, open_backend, platform_hint, runtime_available
from edgekit.device.preprocess import model_input, prepare
from edgekit.device.probe import probe_model
from edgekit.digest import sha256
from edgekit.errors import BundleError
from edgekit.formats import DEVICE_ORDER, DEVICE_RUNTIMES, RUNTIMES
from edgekit.manifest import (
    Artifact,
    Manifest,
    Preprocessing,
    TensorSpec,
    artifact_path,
    read_manifest_data,
    read_verified_artifact,
)
from edgekit.paths import bundle_folder, default_bundle_dir
from edgekit.signing import Trust, canonical_manifest, require_trusted
from edgekit.startup import release

FORMAT_ORDER = DEVICE_ORDER  # the format table's device preference: smallest and fastest first


def resolve_artifact(manifest: Manifest, fmt: str | None = None, allow_failed: bool = False) -> Artifact:
    """The artifact to run: ``fmt`` if given, else the first usable one in :data:`FORMAT_ORDER`.

    ``allow_failed`` lets a benchmark measure a named format that failed validation."""
    arts = manifest.artifacts
    if fmt is not None:
        art = arts.get(fmt)
        if art is None:
            have = ", ".join(sorted(arts)) or "none"
            raise BundleError(f"the bundle has no {fmt} model (it has: {have})")
        if art.runtime not in DEVICE_RUNTIMES:
            raise BundleError(f"{fmt} needs {art.runtime}, which the device runtime does not use")
        if art.status != "ok" and not (allow_failed and art.status == "failed_validation"):
            raise BundleError(f"{fmt} is marked {art.status} in the manifest; choose another format")
        if not runtime_available(art.runtime):
            raise BundleError(f"{fmt} needs the {art.runtime} runtime, which is not installed"
                              f" (pip install {RUNTIMES[art.runtime].install}){platform_hint()}")
        return art
    for name in FORMAT_ORDER:
        art = arts.get(name)
        if art is not None and art.status == "ok" and runtime_available(art.runtime):
            return art
    usable = [a.format for a in arts.values() if a.runtime in DEVICE_RUNTIMES]
    if not usable:
        raise BundleError("the bundle has no device model (TFLite or ONNX); "
                          "run `edgekit model export` on it first")
    raise BundleError(
        f"no usable model among {', '.join(usable)}: each is either not ok or its runtime is not installed"
        f" (pip install {' '.join(RUNTIMES[r].install.split()[0] for r in DEVICE_RUNTIMES)})"
        + platform_hint()
    )


def _input_layout(shape: list[int], manifest: Manifest) -> str:
    """``NHWC`` or ``NCHW`` when the model's input matches the manifest, else BundleError."""
    h, w = manifest.preprocessing.input_size
    c = manifest.preprocessing.channels
    dims = [int(d) for d in shape[1:]]
    if len(shape) == 4 and _matches(dims, [h, w, c]):
        return "NHWC"
    if len(shape) == 4 and _matches(dims, [c, h, w]):
        return "NCHW"
    raise BundleError(
        f"the model's input shape {shape} does not match the manifest's preprocessing "
        f"({h}x{w}x{c}); the manifest belongs to another model"
    )


def check_input_values(spec: TensorSpec, pre: Preprocessing) -> None:
    """The values the manifest's preprocessing produces must be what the model's input tensor takes:
    an integer input without quantization takes raw pixels (``scaling: in_model``); a quantized one
    covers a real-valued range that must match ``input_range``. Float inputs cannot be checked."""
    dtype = np.dtype(spec.dtype)
    if dtype.kind not in "iu":
        return
    assert pre.input_range is not None  # derived in Preprocessing.__post_init__
    lo, hi = pre.input_range
    scale, zero = spec.scale or 1.0, spec.zero_point or 0
    info = np.iinfo(dtype)
    m_lo, m_hi = (info.min - zero) * scale, (info.max - zero) * scale
    if scale == 1.0 and zero == 0:
        if pre.scaling != "in_model" or m_lo > 0 or m_hi < 255:
            raise BundleError(
                f"the model takes raw {dtype.name} pixels ({m_lo:g}..{m_hi:g}) but the preprocessing gives "
                f"values {lo:g}..{hi:g} (scaling {pre.scaling}); the two contradict each other"
            )
        return
    tol = 0.1 * (m_hi - m_lo)
    if abs(m_lo - lo) > tol or abs(m_hi - hi) > tol:
        raise BundleError(
            f"the model's {dtype.name} input is quantized for values {m_lo:.4g}..{m_hi:.4g} but the "
            f"preprocessing gives {lo:.4g}..{hi:.4g}; fix --scale/--mean/--std (or the manifest)"
        )


def _matches(dims: list[int], want: list[int]) -> bool:
    return len(dims) == len(want) and all(d in (-1, x) or x == -1 for d, x in zip(dims, want, strict=True))


@dataclass
class Prediction:
    """One classified crop."""

    label: str  # the counted label: the positive one when p_positive reaches the cutoff (Decision)
    probability: float  # of ``label``
    p_positive: float | None  # of the manifest's positive label, when it has one
    decision: str  # positive | negative | uncertain (refer to microscopy); the label when no positive label
    probabilities: list[float]


class Classifier:
    """A loaded bundle model. ``predict`` takes uint8 crops from ``prepare()``."""

    def __init__(self, manifest: Manifest, artifact: Artifact, bundle_dir: Path, backend: Backend,
                 manifest_sha256: str | None = None, trust: Trust | None = None) -> None:
        """``manifest_sha256``: the sha256 of the canonical manifest as read (and checked against its
        signature); ``trust``: the signature check's outcome (None: not checked)."""
        self.manifest = manifest
        if manifest_sha256 is None:  # built without load_classifier: the manifest as parsed
            manifest_sha256 = sha256(canonical_manifest(manifest.to_dict())).hexdigest()
        self.manifest_sha256 = manifest_sha256
        self.trust = trust
        self.artifact = artifact
        self.bundle_dir = bundle_dir
        self.backend = backend
        self.labels = list(manifest.labels)
        self.fmt = artifact.format
        self._layout = _input_layout(backend.inputs[0].shape, manifest)
        check_input_values(backend.inputs[0], manifest.preprocessing)
        out_shape = backend.outputs[0].shape
        if out_shape and out_shape[-1] not in (-1, len(self.labels)):
            raise BundleError(
                f"the model has {out_shape[-1]} outputs but the manifest lists {len(self.labels)} labels"
            )

    @property
    def model_sha256(self) -> str:
        return self.artifact.sha256

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, h, w, C) -> float32 (N, num_classes) probabilities (dequantized; the artifact's
        activation applied in float when it outputs logits). A model that gives NaN or values
        outside [0, 1] for any crop of the batch is refused (:class:`BundleError`)."""
        probs = self.outputs(batch)
        bad = improbable_rows(probs)
        if bad.any():  # a broken model: never a label read off NaN, nor a count or an accuracy made of it
            row = np.asarray(probs, np.float64).reshape(len(probs), -1)[int(np.argmax(bad))]
            raise BundleError(
                f"the model ({self.fmt}) gave no probabilities for {int(bad.sum())} of {len(bad)} crops of a "
                f"batch (e.g. {', '.join(f'{v:.3g}' for v in row[:4])}): it is broken for such crops; "
                "nothing of this batch was counted"
            )
        return probs

    def outputs(self, batch: np.ndarray) -> np.ndarray:
        """:meth:`predict` unchecked: what the model gives, as probabilities when it is sound."""
        h, w = self.manifest.preprocessing.input_size
        want = (h, w, self.manifest.preprocessing.channels)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != want:
            raise ValueError(f"expected a batch of shape (N, {', '.join(map(str, want))}), got {batch.shape}")
        batch = model_input(batch, self.manifest.preprocessing)
        if self._layout == "NCHW":
            batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        return to_probabilities(self.backend.run(batch), self.artifact.output, self.artifact.activation)

    def interpret(self, probs: np.ndarray) -> Prediction:
        """Label, probability and thresholded decision for one row of ``predict``."""
        values = [float(p) for p in np.asarray(probs, dtype=np.float64)]
        rule = self.manifest.decision
        i = rule.cell_label_index(values)
        pos = rule.positive_index
        p_pos = None if pos is None else values[pos]
        decision = self.labels[i] if p_pos is None else rule.cell_call(p_pos)
        return Prediction(self.labels[i], values[i], p_pos, decision, values)

    def classify(self, rgb: np.ndarray) -> Prediction:
        """Classify one decoded RGB uint8 image (any size) through the shared ``prepare()``."""
        x = prepare(rgb, self.manifest.preprocessing)
        return self.interpret(self.predict(x[None])[0])


def load_classifier(
    bundle: str | os.PathLike | None = None,
    fmt: str | None = None,
    threads: int | None = None,
    verify: bool = True,
    allow_failed: bool = False,
    allow_unsigned: bool | None = None,
    warn: Callable[[str], None] | None = None,
) -> Classifier:
    """Load a bundle's model for the device; see the module docstring for the checks made.

    The bundle must be signed by a trusted key unless ``allow_unsigned`` (default:
    ``$EDGEKIT_ALLOW_UNSIGNED``); an untrusted bundle loaded that way is reported through ``warn``
    (default: one line on stderr)."""
    bundle_dir = default_bundle_dir() if bundle is None else bundle_folder(bundle)
    if bundle is None and not (bundle_dir / "manifest.json").is_file():
        raise BundleError(
            "no default model is shipped with this edgekit install yet; pass --model BUNDLE "
            "(a folder written by `edgekit model export`)"
        )
    data = read_manifest_data(bundle_dir)
    trust = require_trusted(bundle_dir, data, allow_unsigned)
    if not trust.trusted:
        (warn or _warn)(f"warning: running an untrusted bundle {bundle_dir}: {trust.reason}")
    manifest = Manifest.from_dict(data)
    artifact = resolve_artifact(manifest, fmt, allow_failed=allow_failed)
    content = None
    if verify:
        path, content = read_verified_artifact(bundle_dir, artifact)
        probe_model(artifact.runtime, path, artifact.sha256, content)
    else:
        path = artifact_path(bundle_dir, artifact)
        if not path.is_file():
            raise BundleError(f"artifact {artifact.format} missing: {path}")
    if threads is not None and threads < 1:
        raise BundleError(f"threads must be at least 1, not {threads}")
    backend = open_backend(artifact.runtime, path, threads, content)
    _check_declared_io(artifact, backend)
    manifest_sha256 = sha256(canonical_manifest(data)).hexdigest()
    release()  # the edgekit script's start ends with its model loaded (edgekit.startup)
    return Classifier(manifest, artifact, bundle_dir, backend, manifest_sha256, trust)


def _warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _check_declared_io(artifact: Artifact, backend: Backend) -> None:
    """The manifest's recorded input (shape, dtype) must be what the model file really takes."""
    if not artifact.inputs:
        return
    declared, actual = artifact.inputs[0], backend.inputs[0]
    if declared.dtype != actual.dtype or not _matches(
        [int(d) for d in actual.shape[1:]], [int(d) for d in declared.shape[1:]]
    ):
        raise BundleError(
            f"{artifact.format}: the manifest declares input {declared.shape} {declared.dtype} but the model "
            f"takes {actual.shape} {actual.dtype}"
        )


__all__ = [
    "FORMAT_ORDER",
    "Classifier",
    "Prediction",
    "check_input_values",
    "default_bundle_dir",
    "load_classifier",
    "resolve_artifact",
]
