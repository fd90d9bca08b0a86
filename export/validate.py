"""Validate an exported format against the Keras model on real validation data.

Float formats are compared strictly (max |dp|); int8 formats statistically (top-1 agreement with
Keras and the accuracy drop), as optimum's ``validate_model_outputs`` and keras-hub's LiteRT tests do.
"""

from __future__ import annotations

import numpy as np

from edgekit.export.options import Bounds, Format
from edgekit.manifest import Decision


def called_classes(p: np.ndarray, decision: Decision) -> np.ndarray:
    """Class indices as the device calls them (:meth:`Decision.cell_label_index`): the manifest's
    cutoff for binary models with a positive label, argmax otherwise (a single sigmoid output counts
    as the positive class's probability)."""
    p = class_probabilities(p)
    pos = decision.positive_index
    if pos is not None and p.shape[1] == 2:
        return np.where(decision.counted(p[:, pos]), pos, 1 - pos)
    return p.argmax(axis=1)


def class_probabilities(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, np.float64).reshape(len(p), -1)
    return np.concatenate([1 - p, p], axis=1) if p.shape[1] == 1 else p


def compare(fmt: Format, probs: np.ndarray, reference: np.ndarray, y: np.ndarray | None,
            bounds: Bounds, decision: Decision) -> dict:
    """Validation record of one format: metrics, bound, ``status`` and a ``reason`` when it fails."""
    rec: dict = {"check": fmt.check, "n": int(len(reference))}
    if probs.shape != reference.shape:
        return {**rec, "status": "failed_validation",
                "reason": f"output shape {list(probs.shape)} != Keras {list(reference.shape)}"}
    diff = np.abs(probs.astype(np.float64) - reference.astype(np.float64))
    finite = bool(np.isfinite(probs).all())
    rec["max_abs_diff"] = float(diff.max()) if finite else float("nan")
    rec["mean_abs_diff"] = float(diff.mean()) if finite else float("nan")
    ref_cls, cls = called_classes(reference, decision), called_classes(probs, decision)
    rec["agreement"] = float((ref_cls == cls).mean())
    if y is not None:
        rec["accuracy_keras"] = float((ref_cls == y).mean())
        rec["accuracy"] = float((cls == y).mean())
        rec["accuracy_drop"] = rec["accuracy_keras"] - rec["accuracy"]
    reasons = []
    if not finite:
        reasons.append("outputs contain NaN or inf")
    elif fmt.check in ("exact", "fp16"):
        bound = bounds.fp32_max_abs if fmt.check == "exact" else bounds.fp16_max_abs
        rec["bound"] = {"max_abs_diff": bound}
        if not rec["max_abs_diff"] <= bound:
            reasons.append(f"max |dp| {rec['max_abs_diff']:.2e} > {bound:.0e}")
    else:
        rec["bound"] = {"agreement": bounds.int8_min_agreement,
                        "accuracy_drop": bounds.int8_max_accuracy_drop}
        if not rec["agreement"] >= bounds.int8_min_agreement:
            reasons.append(f"top-1 agreement {rec['agreement']:.2%} < {bounds.int8_min_agreement:.0%}")
        if y is not None and not rec["accuracy_drop"] <= bounds.int8_max_accuracy_drop:
            reasons.append(f"accuracy drop {100 * rec['accuracy_drop']:.2f} points"
                           f" > {100 * bounds.int8_max_accuracy_drop:.1f}")
    rec["status"] = "failed_validation" if reasons else "ok"
    if reasons:
        rec["reason"] = "; ".join(reasons)
    return rec


def render_table(rows: list[dict]) -> str:
    """Markdown table: format, size, max |dp|, agreement, accuracy, status."""
    lines = ["| format | size (KB) | max abs dp | agreement | accuracy | status |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        v = r.get("validation", {})
        acc = v.get("accuracy")
        lines.append(
            f"| {r['format']} | {r['bytes'] / 1024:.1f} | "
            + (f"{v['max_abs_diff']:.2e}" if "max_abs_diff" in v else "-") + " | "
            + (f"{v['agreement']:.2%}" if "agreement" in v else "-") + " | "
            + (f"{acc:.2%}" if acc is not None else "-") + " | "
            + r["status"] + (f" ({v['reason']})" if v.get("reason") else "") + " |"
        )
    return "\n".join(lines) + "\n"
