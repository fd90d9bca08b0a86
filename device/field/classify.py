# pyright: basic
"""Classifying a field's cells with an injected classifier, and field crops for screening."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.device.backends import predict_in_batches
from edgekit.device.field.count import count_cells
from edgekit.device.field.crop import crop_cell
from edgekit.device.field.focus import rule_of
from edgekit.device.field.types import ClassifierLike, FieldParams, FieldReport, cell_id
from edgekit.errors import ImageError


@dataclass(frozen=True)
class Known:
    """What the classifier said of one crop elsewhere: its counted-class probability and its domain
    guard score (None: no lit pixels to measure)."""

    p: float
    domain_score: float | None


def classify_crops(crops: list[np.ndarray], classifier: ClassifierLike, batch_size: int = 64) -> list[float]:
    """Positive-class probability of each crop, resized with the bundle's own preprocessing."""
    from edgekit.device.preprocess import prepare

    if not crops:
        return []
    pre = classifier.manifest.preprocessing
    pos = classifier.manifest.decision.counted_index
    probs = predict_in_batches(classifier.predict, crops, batch_size,
                               lambda batch: np.stack([prepare(c, pre) for c in batch]))
    return [float(v) for v in np.asarray(probs, dtype=np.float32)[:, pos]]


def _load(path_or_rgb: str | os.PathLike | np.ndarray) -> tuple[str, np.ndarray]:
    from edgekit.device.preprocess import read_image

    if isinstance(path_or_rgb, np.ndarray):
        rgb = path_or_rgb
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ImageError(f"expected an RGB uint8 (H, W, 3) array, got {rgb.dtype} {rgb.shape}")
        return "<array>", rgb
    return str(path_or_rgb), read_image(path_or_rgb)


def analyze_field(
    path_or_rgb: str | os.PathLike | np.ndarray,
    classifier: ClassifierLike | None = None,
    batch_size: int = 64,
    params: FieldParams | None = None,
    keep_image: bool = False,
    focus: float | None = None,
) -> FieldReport:
    """Find, crop and (with a classifier) classify every red cell of one field.

    Never raises for bad input: unreadable images, unusable fields and fields without cells come
    back with ``rejected`` set to the reason, so a batch carries on. ``focus``: the field's
    :func:`~edgekit.device.field.quality.field_focus` when the caller has it already.
    """
    report, rgb = segment_field(path_or_rgb, classifier, params, focus)
    return classify_field(report, rgb, classifier, batch_size, keep_image)


def segment_field(
    path_or_rgb: str | os.PathLike | np.ndarray,
    classifier: ClassifierLike | None = None,
    params: FieldParams | None = None,
    focus: float | None = None,
) -> tuple[FieldReport, np.ndarray | None]:
    """The first half of :func:`analyze_field`: decode and find the cells (no model; safe to run in
    a worker thread). Returns the report so far and the decoded field (None when unreadable).
    ``focus``: as for :func:`analyze_field`."""
    p = params or FieldParams()
    source = "<array>" if isinstance(path_or_rgb, np.ndarray) else str(path_or_rgb)
    report = FieldReport(source=source, decision=None if classifier is None else classifier.manifest.decision)
    t0 = time.perf_counter()
    try:
        source, rgb = _load(path_or_rgb)
    except ImageError as exc:
        report.rejected = str(exc)
        return report, None
    report.shape = (int(rgb.shape[0]), int(rgb.shape[1]))
    t1 = time.perf_counter()
    report.timing["decode"] = t1 - t0
    report.cells, report.cell_radius, reason = count_cells(rgb, p, focus, rule_of(classifier))
    report.timing["segment"] = time.perf_counter() - t1
    if reason is not None:
        report.rejected = reason
        report.cells = []
    return report, rgb


def classify_field(
    report: FieldReport,
    rgb: np.ndarray | None,
    classifier: ClassifierLike | None = None,
    batch_size: int = 64,
    keep_image: bool = False,
    known: list[Known | None] | None = None,
    features: list[np.ndarray | None] | None = None,
) -> FieldReport:
    """The second half of :func:`analyze_field`: crop and classify the cells found. ``known``: per
    cell, what this classifier already said of that crop (e.g. while recording it), or None: only
    the others are classified. ``features``: the cells' :func:`field_features`, when the caller
    measured them."""
    t2 = time.perf_counter()
    if rgb is not None and report.rejected is None and classifier is not None:
        _classify_cells(report, rgb, classifier, batch_size, known, t2, features)
    if classifier is not None:  # the domain guard's verdict (a rejected field has no cells to vouch for)
        from edgekit.device.domain import field_verdict

        report.domain = field_verdict(report.domain_scores, classifier.manifest.domain)
    if keep_image:
        report.image = rgb
    return report


def _classify_cells(report: FieldReport, rgb: np.ndarray, classifier: ClassifierLike, batch_size: int,
                    known: list[Known | None] | None, t2: float,
                    features: list[np.ndarray | None] | None = None) -> None:
    """:func:`classify_field` of a field with cells: each cell cut and measured (its
    :func:`~edgekit.device.domain.crop_features`) once, for the colour rule and its domain score.
    Given ``features``, the caller measured them and refused the field or not already
    (:func:`edgekit.device.screening.field_refusal`): only the cells still to classify are cut."""
    domain = classifier.manifest.domain
    crops: list[np.ndarray] | None = None
    if features is None:
        crops = [crop_cell(rgb, c) for c in report.cells]
        features = field_features(crops, domain)
        _refuse_unlike(report, rgb, classifier, features)
        if report.rejected is not None:
            return
    feats = features
    given = known or [None] * len(report.cells)
    todo = [i for i, k in enumerate(given) if k is None]
    cut = [crops[i] if crops is not None else crop_cell(rgb, report.cells[i]) for i in todo]
    fresh = iter(classify_crops(cut, classifier, batch_size))
    report.probabilities = [next(fresh) if k is None else k.p for k in given]
    report.decisions = [classifier.manifest.decision.cell_call(pr) for pr in report.probabilities]
    report.timing["classify"] = time.perf_counter() - t2
    if feats is not None and domain is not None:
        from edgekit.device.domain import feature_scores

        scores = iter(feature_scores([feats[i] for i in todo], domain))
        report.domain_scores = [next(scores) if k is None else k.domain_score for k in given]


def field_features(crops: Sequence[np.ndarray], domain: Any) -> list[np.ndarray | None] | None:
    """Each crop's :func:`~edgekit.device.domain.crop_features`, for the colour rule and the domain
    scores; None when the bundle has no domain guard (nothing to measure them against)."""
    if domain is None:
        return None
    from edgekit.device.domain import crop_features

    return [crop_features(c) for c in crops]


def colourless_reason(feats: Sequence[np.ndarray | None] | None, domain: Any) -> str | None:
    """Why a field's cells have no stain colour, by the crop gate's own rule on all of them
    (``feats``: every cell's :func:`field_features`; ``domain``: the bundle's guard, None: never),
    or None. A grayscale field is refused whole on every path: `field` (:func:`classify_field`)
    and the session paths (:func:`edgekit.device.screening.record_fields`)."""
    if domain is None or not feats:
        return None
    from edgekit.device.domain import colourless_field

    return colourless_field(feats, domain)


def _refuse_unlike(report: FieldReport, rgb: np.ndarray, classifier: ClassifierLike,
                   feats: Sequence[np.ndarray | None] | None) -> None:
    """Reject a field that is a single cell crop (:func:`~edgekit.device.domain.single_cell_reason`)
    or whose cells have no stain colour (:func:`colourless_reason`): not counted."""
    from edgekit.device.domain import border_lit, single_cell_reason

    reason = single_cell_reason(rgb.shape[0], rgb.shape[1], border_lit(rgb), classifier.manifest) or \
        colourless_reason(feats, classifier.manifest.domain)
    if reason:
        report.rejected, report.cells = reason, []


def iter_field_crops(
    path: str | os.PathLike, params: FieldParams | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``("field.jpg#12", crop)`` for every red cell of one field, for screening sessions.

    Raises :class:`ImageError` (before yielding anything) when the field is unreadable or
    unusable, with the reason, so the caller records it as rejected.
    """
    from edgekit.device.preprocess import read_image

    rgb = read_image(path)
    cells, _, reason = count_cells(rgb, params)
    if reason:
        raise ImageError(f"{Path(path).name}: {reason}")
    for c in cells:
        yield cell_id(str(path), c.id), crop_cell(rgb, c)

