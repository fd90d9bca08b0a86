# pyright: basic
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
off-site data it sits 10% above the highest validation score.

A **site** bundle's guard (:func:`fit_site_domain`, called by ``edgekit adapt``) has no off-site data
and no patients: its statistics come from the site's training fields and its thresholds from its
validation fields, ``SITE_MARGIN`` times the highest validation field (and block-of-fields
"session") score. Measured on IML's two stain batches (``benchmarks/domain_drift.py``): the other
stain's fields score 2.4-8x the highest validation field, held-out fields of the same stain up to
~2x (a few frames of a sub-batch that no training block saw), so 2x flags the other stain and
passes the same stain.

Light enough for a workstation without TensorFlow: numpy and OpenCV.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.device.domain import FEATURES, border_lit, chroma, crop_features, distances
from edgekit.errors import DataError
from edgekit.manifest import Domain

MIN_TRAIN_CROPS = 50
NO_OFFSITE_MARGIN = 1.1  # without off-site data: this much above the highest in-domain validation score
SITE_MARGIN = 2.0  # a site guard: this many times the highest validation field / session score
SITE_SESSION_FIELDS = 6  # a site's validation "session": this many consecutive validation fields
MIN_VAL_CROPS = 5


def crop_table(crops: Iterable[str | os.PathLike | np.ndarray],
               unreadable: list[tuple[str, str]] | None = None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(features (n, k), border-lit fraction (n,), indices of the measurable crops) for image files or
    RGB uint8 arrays. Crops without lit pixels are left out; so are unreadable files, each named in
    ``unreadable`` (name, reason) when it is given. :class:`DataError` when none could be read."""
    from edgekit.device.preprocess import read_image
    from edgekit.errors import ImageError

    feats, lit, kept, bad = [], [], [], []
    n = 0
    for n, p in enumerate(crops, 1):
        try:
            rgb = p if isinstance(p, np.ndarray) else read_image(p)
        except ImageError as exc:
            bad.append((Path(p).name, str(exc)))  # pyright: ignore[reportArgumentType]  # a file here
            continue
        f = crop_features(rgb)
        if f is None:
            continue
        feats.append(f)
        lit.append(border_lit(rgb))
        kept.append(n - 1)
    if bad and len(bad) == n:
        raise DataError(f"none of the {n} crops could be read ({bad[0][0]}: {bad[0][1]})")
    if unreadable is not None:
        unreadable.extend(bad)
    k = len(FEATURES)
    return (np.array(feats).reshape(-1, k), np.array(lit), kept)


def unreadable_line(unreadable: Sequence[tuple[str, str]], shown: int = 3) -> str:
    """The one line that names crops left out as unreadable: the count, the first few, the first reason."""
    names = ", ".join(name for name, _ in unreadable[:shown])
    more = f" and {len(unreadable) - shown} more" if len(unreadable) > shown else ""
    first, why = unreadable[0]
    return f"{len(unreadable)} unreadable crop(s) left out: {names}{more} ({first}: {why})"


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


def choose_threshold(inside: Sequence[float] | np.ndarray, outside: Sequence[float] = (),
                     max_false: float = 0.05, catch: float = 0.975) -> tuple[float, str]:
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


def _crop_limits(train: np.ndarray, train_lit: np.ndarray, d_train: np.ndarray) -> dict[str, Any]:
    """The single-crop limits and descriptive quantiles of a :class:`Domain`, from its training crops."""
    chromas = np.array([chroma(f) for f in train])
    return {
        "min_cells": 5,
        "min_chroma": round(float(0.5 * np.percentile(chromas, 0.1)), 3),
        "max_border_lit": round(float(min(0.95, max(0.6, np.percentile(train_lit, 99.9) + 0.1))), 3),
        "max_crop_distance": round(float(3 * np.percentile(d_train, 99.9)), 3),
        "n": int(len(train)),
        "quantiles": {name: np.percentile(train[:, i], [1, 50, 99]).round(4).tolist()
                      for i, name in enumerate(FEATURES)},
    }


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
    domain = Domain(
        features=list(FEATURES), mean=mean.tolist(), inv_cov=icov.tolist(),
        field_threshold=round(field_t, 4), session_threshold=round(session_t, 4),
        **_crop_limits(train, train_lit, d_train),
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


def consecutive_sessions(fields: Sequence[str], size: int = SITE_SESSION_FIELDS) -> dict[str, list[str]]:
    """Pseudo-sessions of a site's fields: ``size`` consecutive field names (sorted) each; a last
    shorter run joins the one before it."""
    names = sorted(set(fields))
    runs = [names[i : i + size] for i in range(0, len(names), size)]
    if len(runs) > 1 and len(runs[-1]) < size:
        last = runs.pop()
        runs[-1] = runs[-1] + last
    return {f"{r[0]}..{r[-1]}": r for r in runs}


def fit_site_features(train: np.ndarray, train_lit: np.ndarray, val: np.ndarray, val_fields: Sequence[str],
                      margin: float = SITE_MARGIN, session_fields: int = SITE_SESSION_FIELDS,
                      source: str = "") -> tuple[Domain, dict[str, Any]]:
    """:func:`fit_site_domain` on crop features already measured (:func:`crop_table`)."""
    if not margin >= 1.0:
        raise ValueError(f"the site guard's margin must be at least 1, not {margin}")
    if len(val) < MIN_VAL_CROPS:
        raise DataError(f"{len(val)} measurable validation crops; the site guard's thresholds need at least "
                        f"{MIN_VAL_CROPS}")
    if len(val_fields) != len(val):
        raise DataError(f"{len(val_fields)} field names for {len(val)} validation crops")
    mean, icov = fit_statistics(train)
    proto = Domain(features=list(FEATURES), mean=mean.tolist(), inv_cov=icov.tolist(),
                   field_threshold=1.0, session_threshold=1.0)
    d_train, d_val = distances(train, proto), distances(val, proto)
    g = np.asarray(val_fields)
    fields = median_by_group(d_val, list(val_fields))
    sessions = {k: float(np.median(d_val[np.isin(g, v)]))
                for k, v in consecutive_sessions(val_fields, session_fields).items()}
    hi_field, hi_session = max(fields.values()), max(sessions.values())
    domain = Domain(
        features=list(FEATURES), mean=mean.tolist(), inv_cov=icov.tolist(),
        field_threshold=round(margin * hi_field, 4), session_threshold=round(margin * hi_session, 4),
        session_warn=round(hi_session, 4),
        **_crop_limits(train, train_lit, d_train),
        source=(f"{source}; site guard: statistics of {len(train)} training-field crops; thresholds "
                f"{margin:g}x the highest of {len(fields)} validation fields ({hi_field:.2f}) and of "
                f"{len(sessions)} runs of {session_fields} consecutive validation fields ({hi_session:.2f}); "
                "no off-site data").strip("; "),
    )
    report = {
        "train_crops": int(len(train)), "val_crops": int(len(val)), "margin": margin,
        "field_threshold": domain.field_threshold, "session_threshold": domain.session_threshold,
        "session_warn": domain.session_warn, "val_fields": fields, "val_sessions": sessions,
        "train_distance_percentiles_50_99_99.9": np.percentile(d_train, [50, 99, 99.9]).round(3).tolist(),
    }
    return domain, report


def fit_site_domain(train_crops: Sequence[str | os.PathLike | np.ndarray],
                    val_crops: Sequence[str | os.PathLike | np.ndarray], val_fields: Sequence[str], *,
                    margin: float = SITE_MARGIN, session_fields: int = SITE_SESSION_FIELDS,
                    source: str = "") -> tuple[Domain, dict[str, Any]]:
    """The domain guard of a site bundle, from the site's own labelled cells (``edgekit cells``).

    ``train_crops``: crops (files or RGB arrays) of the training fields, whose features give the
    statistics; ``val_crops`` with ``val_fields`` (the field of each crop, e.g. ``Item.group``): crops
    of the validation fields, which alone set the thresholds. Never pass test fields. Returns the
    :class:`Domain` for ``manifest.domain`` and a report of how it was chosen; raises
    :class:`DataError` when there are too few measurable crops (fewer than 50 training, 5 validation).
    """
    train, lit, _ = crop_table(train_crops)
    val, _, kept = crop_table(val_crops)
    return fit_site_features(train, lit, val, [val_fields[k] for k in kept], margin, session_fields, source)


def _quiet(line: str) -> None:
    """The default progress sink: nothing."""


def offsite_field_paths(paths: Sequence[Path], lists: Sequence[Path]) -> list[Path]:
    """Off-site dev fields: files and folders, and text files listing fields (one per line, relative
    to the shared data folder)."""
    from edgekit.device.pipeline import image_files
    from edgekit.paths import shared_data
    from edgekit.safefile import read_text_argument

    out = image_files(paths, "off-site field")
    for lst in lists:
        if not lst.exists():
            raise DataError(f"field list not found: {lst}")
        for line in read_text_argument(lst, 16 << 20, "field list").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                f = Path(line) if Path(line).is_absolute() else shared_data() / line
                if not f.is_file():
                    raise DataError(f"{lst}: listed field not found: {f}")
                out.append(f)
    return out


def fit_site_guard(data: Path, block: int, max_train_crops: int,
                   log: Callable[[str], None] = _quiet) -> tuple[Domain, dict[str, Any]]:
    """The site guard from an `edgekit cells` folder: blocks of fields, 80% statistics, 20% thresholds."""
    from edgekit.cells import block_split, field_of
    from edgekit.device.pipeline import image_files

    if not data.is_dir():
        raise DataError(f"site cells not found: {data} (a folder from `edgekit site cells`)")
    files = image_files([data], "site cell")
    fields = sorted({field_of(f) for f in files})
    if len(fields) < 2:
        raise DataError(f"{data} holds cells of {len(fields)} field(s): the site guard needs at least 2 "
                        "(statistics and thresholds come from different fields)")
    parts = block_split(fields, (0.8, 0.2, 0.0), block)
    if not parts["val"]:  # fewer than 3 blocks: the last block sets the thresholds
        last = sorted(fields)[-block:] if len(fields) > block else sorted(fields)[-1:]
        parts = {"train": [f for f in fields if f not in last], "val": last}
    train = [f for f in files if field_of(f) in set(parts["train"])]
    val = [f for f in files if field_of(f) in set(parts["val"])]
    if len(train) > max_train_crops:
        pick = np.random.default_rng(0).choice(len(train), max_train_crops, replace=False)
        train = [train[k] for k in sorted(pick)]
    log(f"site guard: {len(train)} crops of {len(parts['train'])} fields for the statistics, "
        f"{len(val)} crops of {len(parts['val'])} fields for the thresholds…")
    unreadable: list[tuple[str, str]] = []
    train_f, lit, _ = crop_table(train, unreadable)
    val_f, _, kept = crop_table(val, unreadable)
    dom, report = fit_site_features(train_f, lit, val_f, [field_of(val[k]) for k in kept],
                                    source=f"site cells of {data.name} (`edgekit domain fit --site`, "
                                           f"blocks of {block})")
    return dom, {**report, "unreadable": unreadable}


def fit_split_guard(
    data: Path, data_root: Path | None, offsite: Sequence[Path], offsite_list: Sequence[Path],
    max_train_crops: int, log: Callable[[str], None] = _quiet,
) -> tuple[Domain, dict[str, Any]]:
    """The guard from a split (or a folder split by patient) and optional off-site dev fields."""
    if data.is_dir():
        from edgekit.data import scan_dataset
        from edgekit.splits import make_split

        split = make_split(scan_dataset(data))
        root = Path(split.data_root)
    else:
        from edgekit.splits import load_split

        split, _ = load_split(data, data_root)
        root = Path(split.data_root)
    parts = {k: v for k, v in split.parts.items() if v}
    if "train" not in parts or "val" not in parts:
        raise DataError("the split needs training and validation groups (val fraction > 0)")
    log(f"measuring {min(len(parts['train']), max_train_crops)} of {len(parts['train'])} training and"
        f" {len(parts['val'])} validation crops…")
    train_items = parts["train"]
    if len(train_items) > max_train_crops:
        pick = np.random.default_rng(0).choice(len(train_items), max_train_crops, replace=False)
        train_items = [train_items[k] for k in sorted(pick)]
    unreadable: list[tuple[str, str]] = []
    train, train_lit, _ = crop_table((root / i.path for i in train_items), unreadable)
    val_items = parts["val"]
    val, _, kept = crop_table((root / i.path for i in val_items), unreadable)
    fields = offsite_field_paths(offsite, offsite_list)
    off, off_names = None, []
    if fields:
        log(f"finding cells in {len(fields)} off-site dev fields…")
        off, off_names, _ = field_table(fields)
    dom, report = fit_domain(train, train_lit, val, [val_items[k].group for k in kept], off, off_names,
                             source=f"{len(train)} training crops of {data.name}; {len(fields)} off-site dev "
                                    "fields")
    return dom, {**report, "unreadable": unreadable}
