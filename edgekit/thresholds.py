# pyright: basic
"""Choosing the decision thresholds from validation patients (never from test patients).

Cell level: the cutoff maximises Youden's J (sensitivity + specificity - 1) on validation crops;
the uncertain band ("refer to microscopy") is the narrowest one around it outside of which the
validation crops are classified with at least ``target`` precision on each side.
Patient level: a patient is positive when the lower Wilson 95% bound of the fraction of
parasitized-called cells is above ``positive_fraction`` (set above the highest fraction seen among
validation control patients), negative when the upper bound is below it, refer otherwise.
"""

from __future__ import annotations

import numpy as np

from edgekit.manifest import Decision, PatientRule, Thresholds
from edgekit.metrics import roc_curve


def youden_cutoff(y: np.ndarray, p: np.ndarray) -> float:
    fpr, tpr, thr = roc_curve(y, p)
    j = tpr - fpr
    best = int(np.argmax(j[1:])) + 1  # skip the +inf point
    return float(np.clip(thr[best], 0.0, 1.0))


def count_cutoff(y: np.ndarray, p: np.ndarray) -> float:
    """The cutoff calling as many cells positive as are labelled positive, so the counted
    parasitemia is unbiased on these cells (at low prevalence Youden's J, blind to prevalence,
    calls far more false positives than there are parasites)."""
    y = np.asarray(y).astype(bool)
    p = np.sort(np.asarray(p, dtype=np.float64))[::-1]
    k = int(y.sum())
    if k == 0:
        return 1.0
    return float(np.clip(p[k - 1], 0.0, 1.0))


def band_edges(y: np.ndarray, p: np.ndarray, cut: float, target: float = 0.99) -> tuple[float, float]:
    """(positive, negative) edges of the uncertain band around ``cut``: the lowest threshold at which
    positive calls reach ``target`` precision (1.0 when none does) and the highest below which
    negative calls reach ``target`` negative predictive value (0.0 when none does)."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    for t in np.unique(p[p >= cut]):  # ascending: the lowest threshold that is precise enough
        called = p >= t
        if called.sum() and y[called].mean() >= target:
            positive = float(t)
            break
    else:
        positive = 1.0
    for t in np.unique(p[p <= cut])[::-1]:  # descending: the highest threshold with enough NPV
        called = p < t
        if called.sum() and (~y[called]).mean() >= target:
            negative = float(t)
            break
    else:
        negative = 0.0
    return max(positive, cut), min(negative, cut)


def _band_text(target: float) -> str:
    return (f"edges at {target:.0%} precision (positive side) and negative predictive value "
            "(negative side)")


def choose_thresholds(
    y: np.ndarray, p: np.ndarray, target: float = 0.99, method: str = "youden", outputs: str = "Keras"
) -> Thresholds:
    """Cutoff by Youden's J (``method="youden"``) or by matching the labelled count (``"count"``,
    :func:`count_cutoff`); band edges where positive calls reach ``target`` precision and negative
    calls reach ``target`` negative predictive value on the validation crops (:func:`band_edges`).
    ``outputs`` names the model the probabilities came from, for the record."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    if method not in ("youden", "count"):
        raise ValueError(f"unknown cutoff method {method!r}: youden or count")
    cut = youden_cutoff(y, p) if method == "youden" else count_cutoff(y, p)
    positive, negative = band_edges(y, p, cut, target)
    source = (
        f"validation crops (n={len(y)}), {outputs} outputs: cutoff by "
        f"{'Youden J' if method == 'youden' else 'matching the labelled positive count'}; "
        + "band " + _band_text(target)
    )
    return Thresholds(positive=positive, negative=negative, cutoff=cut, source=source)


def rechoose_band(thresholds: Thresholds, y: np.ndarray, p: np.ndarray, outputs: str,
                  target: float = 0.99) -> Thresholds:
    """The same cutoff (the patient rule was chosen with it), the band edges chosen again on ``p``:
    the probabilities of the format the device runs (``outputs`` names it), on the validation crops.
    The source keeps how the cutoff was chosen and records the band's data and, as a check of the
    cutoff, the Youden J cutoff on these outputs."""
    y = np.asarray(y).astype(bool)
    cut = float(thresholds.cutoff)  # type: ignore[arg-type]  # set by Thresholds.__post_init__
    positive, negative = band_edges(y, p, cut, target)
    how = thresholds.source.split("; band")[0]
    if "outputs" not in how:  # chosen by train or adapt before the source named its model: Keras
        how += " on Keras outputs"
    source = (f"{how}; band: {_band_text(target)} on {outputs} outputs of the validation crops "
              f"(n={len(y)}); cutoff check on {outputs}: Youden J {youden_cutoff(y, p):.4f}")
    return Thresholds(positive=positive, negative=negative, cutoff=cut, source=source)


def band_report(y: np.ndarray, p: np.ndarray, thresholds: Thresholds) -> dict[str, float | int | None]:
    """How the band calls labelled crops: counts called positive / negative / uncertain, the precision
    of the positive calls and the negative predictive value of the negative calls (None when no call)."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    pos, neg = p >= thresholds.positive, p < thresholds.negative
    return {
        "positive_edge": float(thresholds.positive), "negative_edge": float(thresholds.negative),
        "called_positive": int(pos.sum()), "called_negative": int(neg.sum()),
        "uncertain": int((~pos & ~neg).sum()),
        "precision": float(y[pos].mean()) if pos.any() else None,
        "npv": float((~y[neg]).mean()) if neg.any() else None,
    }


def choose_patient_rule(
    control_fractions: list[float], infected_fractions: list[float], stop_cells: int = 1000,
    floor: float = 0.05, positive_evidence: str = "wilson_lower", refused_crops: str = "unknown",
) -> PatientRule:
    """The patient rule from validation patients' called-parasitized fractions: the threshold sits
    above every control (with margin, never below ``floor``); a patient is positive when the
    ``positive_evidence`` (default: the lower Wilson 95% bound of its called fraction) is above
    it, negative when the upper bound is below it, refer otherwise (:meth:`PatientRule.decide`);
    ``refused_crops`` (default ``unknown``) makes refused crops count toward refer."""
    highest_control = max(control_fractions, default=0.0)
    # a fraction, so at most 1 (a poor model's controls can be called parasitized above 2/3)
    positive = min(1.0, max(floor, 1.5 * highest_control))
    lowest_infected = min(infected_fractions, default=1.0)
    evidence = {"wilson_lower": "the lower 95% bound of the called fraction",
                "point": "the called fraction"}.get(positive_evidence, positive_evidence)
    source = (
        f"validation patients: {len(control_fractions)} controls (highest called fraction "
        f"{highest_control:.3f}), {len(infected_fractions)} infected (lowest {lowest_infected:.3f}); "
        f"positive on {evidence}"
        + ("; refused crops count toward refer" if refused_crops == "unknown" else "")
    )
    return PatientRule(positive_fraction=positive, negative_fraction=positive, stop_cells=stop_cells,
                       source=source, positive_evidence=positive_evidence, refused_crops=refused_crops)


def fit_patient_rule(y: np.ndarray, p: np.ndarray, groups: np.ndarray, decision: Decision,
                     stop_cells: int = 1000) -> PatientRule:
    """:func:`choose_patient_rule` from validation cells: per patient (``groups``), the fraction of
    its cells ``decision`` counts as positive; a patient with any positive cell (``y``) is infected."""
    controls, infected = [], []
    for g in np.unique(groups):
        sel = groups == g
        called = float(decision.counted(p[sel]).mean())
        (infected if y[sel].any() else controls).append(called)
    return choose_patient_rule(controls, infected, stop_cells=stop_cells)
