# pyright: basic
"""Classification metrics with 95% confidence intervals. numpy only (the device uses Wilson
intervals for patient summaries; evaluate and bench use all of it)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (well-behaved at 0 and n, unlike Wald)."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact at the edges, not 1e-17
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the rank (Mann-Whitney) statistic, ties averaged."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and thresholds, highest threshold first."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.where(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(1, y.sum())]
    fpr = np.r_[0.0, fps / max(1, (~y).sum())]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def bootstrap_auc_ci(
    y_true: np.ndarray, score: np.ndarray, n_boot: int = 1000, seed: int = 0, groups: np.ndarray | None = None
) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the AUC; resamples whole groups (patients) if given,
    because crops of one patient are not independent."""
    rng = np.random.default_rng(seed)
    y, s = np.asarray(y_true), np.asarray(score)
    if groups is None:
        index_sets = [np.array([i]) for i in range(len(y))]
    else:
        g = np.asarray(groups)
        index_sets = [np.flatnonzero(g == u) for u in np.unique(g)]
    aucs = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(index_sets), len(index_sets))
        idx = np.concatenate([index_sets[i] for i in pick])
        a = roc_auc(y[idx], s[idx])
        if not math.isnan(a):
            aucs.append(a)
    if not aucs:
        return (float("nan"), float("nan"))
    return (float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5)))


MIN_CLASS_CELLS = 10  # an AUC on fewer labelled cells of either class bounds nothing a gate can hold


def auc_lower_bound(auc: dict[str, Any], positives: int, negatives: int) -> float | None:
    """What a gate holds of a cell AUC (:func:`binary_metrics`' ``auc``): the lower end of its 95%
    interval (bootstrap over fields), or None with fewer than :data:`MIN_CLASS_CELLS` cells of either
    class: four cells of two fields gave AUC 1.0 and an interval of [1, 1], and a gate passed on them."""
    if min(positives, negatives) < MIN_CLASS_CELLS:
        return None
    low = (auc.get("ci95") or [None])[0]
    return None if low is None or not math.isfinite(low) else float(low)


def proportion(k: int, n: int, empty: float | None = float("nan")) -> dict[str, Any]:
    """k of n as ``{value, ci95 (Wilson), k, n}``; ``value`` is ``empty`` when n is 0."""
    lo, hi = wilson_interval(k, n)
    return {"value": k / n if n else empty, "ci95": [lo, hi], "k": int(k), "n": int(n)}


def binary_metrics(
    y_true: np.ndarray,
    p_positive: np.ndarray,
    threshold: float = 0.5,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, precision, F1 (Wilson 95% CIs) and AUC (bootstrap CI,
    by group when ``groups`` is given) for a binary task; ``y_true`` is 1 for the positive class."""
    y = np.asarray(y_true).astype(bool)
    pred = np.asarray(p_positive) >= threshold
    tp = int((pred & y).sum())
    tn = int((~pred & ~y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    prec = tp / (tp + fp) if tp + fp else float("nan")
    sens = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * prec * sens / (prec + sens) if prec + sens and not math.isnan(prec + sens) else float("nan")
    auc = roc_auc(y, p_positive)
    return {
        "n": int(len(y)),
        "threshold": float(threshold),
        "accuracy": proportion(tp + tn, len(y)),
        "sensitivity": proportion(tp, tp + fn),
        "specificity": proportion(tn, tn + fp),
        "precision": proportion(tp, tp + fp),
        "f1": f1,
        "auc": {"value": auc, "ci95": list(bootstrap_auc_ci(y, p_positive, n_boot=n_boot, groups=groups))},
        "confusion": {"tp": tp, "fn": fn, "fp": fp, "tn": tn},
    }


def sensitivity_at_specificity(
    y_true: np.ndarray, score: np.ndarray, min_specificity: float
) -> dict[str, float]:
    """The highest sensitivity with specificity >= ``min_specificity`` on these scores, and the
    threshold that gives it (a cell is called positive when its score >= threshold)."""
    fpr, tpr, thr = roc_curve(y_true, score)
    ok = (1.0 - fpr) >= min_specificity
    k = int(np.flatnonzero(ok)[np.argmax(tpr[ok])])  # the (inf, 0, 0) point always qualifies
    return {"sensitivity": float(tpr[k]), "specificity": float(1.0 - fpr[k]),
            "threshold": float(min(thr[k], 1.0)) if np.isfinite(thr[k]) else 1.0}


def mean_upper_bound(values: Any, level: float = 0.95, resamples: int = 4000) -> float:
    """One-sided upper ``level`` bound of the mean of ``values`` by bootstrap (fixed seed: the same
    numbers give the same bound); inf for fewer than 2 values, which bound nothing."""
    v = np.asarray(values, np.float64)
    if v.size < 2:
        return math.inf
    means = v[np.random.default_rng(0).integers(0, v.size, (resamples, v.size))].mean(axis=1)
    return float(np.quantile(means, level))


def parasitemia_error(called: dict[str, float], labelled: dict[str, float]) -> dict[str, Any]:
    """Per-field parasitemia (fraction of cells called positive) against the labelled fraction, for
    the fields in ``called``: mean absolute (and its upper 95% bound over fields, what a gate holds:
    a mean of a few fields can pass by luck), median absolute, mean signed and largest error in points."""
    d = np.asarray([100.0 * (called[f] - labelled.get(f, 0.0)) for f in sorted(called)], np.float64)
    nan = float("nan")
    return {"fields": int(d.size), "mae_points": float(np.abs(d).mean()) if d.size else nan,
            "mae_upper95_points": mean_upper_bound(np.abs(d)) if d.size else nan,
            "median_points": float(np.median(np.abs(d))) if d.size else nan,
            "bias_points": float(d.mean()) if d.size else nan,
            "max_abs_points": float(np.abs(d).max()) if d.size else nan}


def field_parasitemia_error(fields: np.ndarray, y_true: np.ndarray, called: np.ndarray) -> dict[str, Any]:
    """:func:`parasitemia_error` of labelled cells (``fields`` of each cell): called vs labelled."""
    f = np.asarray(fields)
    y, c = np.asarray(y_true).astype(bool), np.asarray(called).astype(bool)
    return parasitemia_error({u: float(c[f == u].mean()) for u in np.unique(f)},
                             {u: float(y[f == u].mean()) for u in np.unique(f)})
