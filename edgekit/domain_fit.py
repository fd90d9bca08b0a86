"""Fit the domain guard's statistics for a bundle (``edgekit domain fit``).

The statistics (:class:`edgekit.manifest.Domain`) come from the crops of the **training** groups
(patients) of a split: the mean and covariance of each crop's features
(:func:`edgekit.device.domain.crop_features`), plus limits that reject single images that are plainly
not such a cell. The two thresholds are chosen on held-out data: the **validation** groups of the
same split (in-domain: sessions are whole groups, fields are random draws of a field's worth of cells
from one group) and, when given, off-site **dev** fields (out-of-domain: their cells cut by the
device's own field segmentation). The rule (:func:`choose_threshold`): the threshold sits halfway
(geometrically) between the highest in-domain validation score and the off-site score that still
catches ``catch`` of the dev fields; when the two overlap, the in-domain side wins (at most
``max_false`` of validation sessions or fields flagged), and the shortfall is reported. Without
off-site data (a site fitting its own bundle) it sits 10% above the highest validation score.

Light enough for a workstation without TensorFlow: numpy and OpenCV.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.device.domain import FEATURES, chroma, crop_features, distances
from edgekit.device.quality import border_lit
from edgekit.errors import DataError
from edgekit.manifest import Domain

MIN_TRAIN_CROPS = 50
NO_OFFSITE_MARGIN = 1.1  # without off-site data: this much above the highest in-domain validation score


def crop_table(paths: Iterable[str | os.PathLike]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(features (n, k), border-lit fraction (n,), indices of the readable crops) for image files."""
    from edgekit.device.preprocess import read_image
    from edgekit.errors import ImageError

    feats, lit, kept = [], [], []
    for i, p in enumerate(paths):
        try:
            rgb = read_image(p)
        except ImageError:
            continue
        f = crop_features(rgb)
        if f is None:
            continue
        feats.append(f)
        lit.append(border_lit(rgb))
        kept.append(i)
    k = len(FEATURES)
    return (np.array(feats).reshape(-1, k), np.array(lit), kept)


def field_table(paths: Iterable[str | os.PathLike]) -> tuple[np.ndarray, list[str], dict[str, str]]:
    """Features of every cell the device finds in whole fields: (features, field name per cell,
    {field: reason} for fields the device rejects)."""
    from edgekit.device.field import count_cells, crop_cell
    from edgekit.device.preprocess import read_image
    from edgekit.errors import ImageError

    feats, names, rejected = [], [], {}
    for p in paths:
        name = Path(p).name
        try:
            rgb = read_image(p)
        except ImageError as exc:
            rejected[name] = str(exc)
            continue
        cells, _, reason = count_cells(rgb)
        if reason:
            rejected[name] = reason
            continue
        for c in cells:
            f = crop_features(crop_cell(rgb, c))
            if f is not None:
                feats.append(f)
                names.append(name)
    return np.array(feats).reshape(-1, len(FEATURES)), names, rejected


def fit_statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and inverse covariance of training crops' features (a small ridge keeps it invertible)."""
    if len(feats) < MIN_TRAIN_CROPS:
        raise DataError(f"{len(feats)} readable training crops; the domain statistics need at least"
                        f" {MIN_TRAIN_CROPS}")
    mean = feats.mean(axis=0)
    cov = np.cov(feats, rowvar=False)
    cov += np.eye(len(mean)) * 1e-6 * np.trace(cov) / len(mean)
    return mean, np.linalg.inv(cov)


def median_by_group(scores: np.ndarray, groups: Sequence[str]) -> dict[str, float]:
    """Median score per group (a session: one patient's crops; a field: one field's cells)."""
    g = np.asarray(groups)
    return {k: float(np.median(scores[g == k])) for k in sorted(set(groups))}


def pseudo_fields(scores: np.ndarray, groups: Sequence[str], size: int, draws: int = 20,
                  seed: int = 0) -> list[float]:
    """In-domain 'fields' where no fields exist (NIH crops): medians of ``size`` random cells drawn
    from one group, ``draws`` per group."""
    rng = np.random.default_rng(seed)
    g = np.asarray(groups)
    out = []
    for k in sorted(set(groups)):
        s = scores[g == k]
        if len(s) >= size:
            out.extend(float(np.median(rng.choice(s, size, replace=False))) for _ in range(draws))
        elif len(s):  # a group smaller than a field: the whole group is one field
            out.append(float(np.median(s)))
    return out


def choose_threshold(inside: Sequence[float], outside: Sequence[float] = (), max_false: float = 0.05,
                     catch: float = 0.975) -> tuple[float, str]:
    """A threshold on aggregate scores (flag above it) and how it was chosen (see the module doc)."""
    inside = np.sort(np.asarray(inside, dtype=float))
    if not len(inside):
        raise DataError("no in-domain validation scores to choose a threshold on")
    hi_in = float(inside[-1])
    if len(outside):
        lo_out = float(np.quantile(np.asarray(outside, dtype=float), 1 - catch))
        if lo_out > hi_in:
            return float(np.sqrt(hi_in * lo_out)), (
                f"geometric midpoint of the highest in-domain validation score ({hi_in:.2f}) and the "
                f"off-site dev score catching {catch:.1%} ({lo_out:.2f})")
    if not len(outside):
        return hi_in * NO_OFFSITE_MARGIN, (
            f"{NO_OFFSITE_MARGIN:g}x the highest in-domain validation score ({hi_in:.2f}); no off-site data")
    allowed = float(np.quantile(inside, 1 - max_false))
    why = (f"in-domain validation and off-site dev scores overlap: the {1 - max_false:.0%} quantile of "
           f"in-domain validation scores ({allowed:.2f})")
    return max(allowed, 1e-6), why


def fit_domain(train: np.ndarray, train_lit: np.ndarray, val: np.ndarray, val_groups: Sequence[str],
               offsite: np.ndarray | None = None, offsite_fields: Sequence[str] = (),
               field_size: int | None = None, source: str = "") -> tuple[Domain, dict[str, Any]]:
    """The :class:`Domain` of a bundle and a report of how its thresholds were chosen.

    ``train``/``val``: crop features of training and validation groups; ``offsite``: features of
    cells from off-site dev fields, ``offsite_fields`` naming each cell's field."""
    mean, icov = fit_statistics(train)
    proto = Domain(features=list(FEATURES), mean=mean.tolist(), inv_cov=icov.tolist(),
                   field_threshold=1.0, session_threshold=1.0)
    d_train = distances(train, proto)
    d_val = distances(val, proto)
    sessions = median_by_group(d_val, val_groups)
    out_fields: dict[str, float] = {}
    if offsite is not None and len(offsite):
        out_fields = median_by_group(distances(offsite, proto), offsite_fields)
    if field_size is None:
        counts = [int(np.sum(np.asarray(offsite_fields) == f)) for f in out_fields]
        field_size = int(np.median(counts)) if counts else 20
    fields_in = pseudo_fields(d_val, val_groups, field_size)
    field_t, field_why = choose_threshold(fields_in, list(out_fields.values()))
    # a session pools several fields: off-site sessions are at least as far as their fields' median
    session_t, session_why = choose_threshold(list(sessions.values()), list(out_fields.values()))
    chromas = np.array([chroma(f) for f in train])
    quant = {name: np.percentile(train[:, i], [1, 50, 99]).round(4).tolist()
             for i, name in enumerate(FEATURES)}
    domain = Domain(
        features=list(FEATURES), mean=mean.tolist(), inv_cov=icov.tolist(),
        field_threshold=round(field_t, 4), session_threshold=round(session_t, 4),
        min_cells=5,
        min_chroma=round(float(0.5 * np.percentile(chromas, 0.1)), 3),
        max_border_lit=round(float(min(0.95, max(0.6, np.percentile(train_lit, 99.9) + 0.1))), 3),
        max_crop_distance=round(float(3 * np.percentile(d_train, 99.9)), 3),
        n=int(len(train)), quantiles=quant,
        source=(f"{source}; field threshold: {field_why} (in-domain fields: {field_size} random cells of a "
                f"validation patient); session threshold: {session_why}").strip("; "),
    )
    report = {
        "train_crops": int(len(train)), "val_crops": int(len(val)),
        "field_size": field_size, "field_threshold": domain.field_threshold,
        "session_threshold": domain.session_threshold,
        "val_sessions": sessions, "val_pseudo_fields_flagged": float(np.mean(np.array(fields_in) > field_t)),
        "offsite_dev_fields": out_fields,
        "offsite_dev_fields_caught": float(np.mean(np.array(list(out_fields.values())) > field_t))
        if out_fields else None,
        "train_distance_percentiles_50_99_99.9": np.percentile(d_train, [50, 99, 99.9]).round(3).tolist(),
    }
    return domain, report
