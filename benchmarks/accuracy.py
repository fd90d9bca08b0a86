"""Accuracy of one benchmark row: cell-level metrics with 95% CIs, agreement with Keras, and the
patient-level view (predicted vs labelled parasitized fraction; infected vs control patients)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.manifest import Manifest, PatientRule
from edgekit.metrics import binary_metrics, proportion, roc_curve

ROC_POINTS = 300  # enough for a smooth plot; the JSON stays small


def patient_summary(
    y_pos: np.ndarray, called: np.ndarray, groups: np.ndarray, rule: PatientRule
) -> dict[str, Any] | None:
    """Per patient: labelled and predicted positive fractions; mean absolute error in points;
    sensitivity over infected patients (any labelled positive cell) and specificity over controls,
    a patient being called positive by ``rule``. None when every image is its own group."""
    names, inverse = np.unique(groups, return_inverse=True)
    if len(names) == len(groups):
        return None
    patients = []
    for i, name in enumerate(names):
        idx = inverse == i
        n, k_true, k_called = int(idx.sum()), int(y_pos[idx].sum()), int(called[idx].sum())
        patients.append({
            "patient": str(name), "cells": n, "labelled_fraction": k_true / n,
            "predicted_fraction": k_called / n, "infected": k_true > 0,
            "decision": rule.decide(k_called, n),
        })
    infected = [p for p in patients if p["infected"]]
    controls = [p for p in patients if not p["infected"]]
    errors = [abs(p["predicted_fraction"] - p["labelled_fraction"]) for p in patients]
    return {
        "patients": len(patients),
        "fraction_mae_points": 100.0 * float(np.mean(errors)),
        "sensitivity": proportion(sum(p["decision"] == "positive" for p in infected), len(infected),
                                  empty=None),
        "specificity": proportion(sum(p["decision"] != "positive" for p in controls), len(controls),
                                  empty=None),
        "referred": sum(p["decision"] == "refer" for p in patients),
        "per_patient": patients,
    }


def row_accuracy(
    probs: np.ndarray, y: np.ndarray, groups: np.ndarray, manifest: Manifest,
    reference: np.ndarray | None = None, n_boot: int = 1000,
) -> dict[str, Any]:
    """Everything accuracy-related for one row. ``y`` indexes ``manifest.labels`` (-1: a class the
    model does not know; such images count for agreement but not for accuracy)."""
    out: dict[str, Any] = {}
    if reference is not None and reference.shape == probs.shape:
        out["agreement"] = float((probs.argmax(1) == reference.argmax(1)).mean())
        out["mean_abs_dp"] = float(np.abs(probs - reference).mean())
    known = y >= 0
    decision = manifest.decision
    pos = decision.counted_index
    if not known.any() or probs.shape[1] <= pos:
        return out
    p = probs[known, pos].astype(np.float64)
    y_pos = y[known] == pos
    cut = decision.cutoff
    out["cell"] = binary_metrics(y_pos, p, threshold=cut, groups=groups[known], n_boot=n_boot)
    out["top1_accuracy"] = float((probs[known].argmax(1) == y[known]).mean())
    fpr, tpr, _ = roc_curve(y_pos, p)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), ROC_POINTS)).round().astype(int))
    out["roc"] = {"fpr": fpr[keep].round(5).tolist(), "tpr": tpr[keep].round(5).tolist()}
    out["patient"] = patient_summary(y_pos, p >= cut, groups[known], decision.rule)
    return out


def flat_accuracy(acc: dict[str, Any]) -> dict[str, Any]:
    """The scalar columns of a row (value and CI bounds) from :func:`row_accuracy`."""
    row: dict[str, Any] = {k: acc.get(k) for k in ("agreement", "mean_abs_dp", "top1_accuracy")}
    cell = acc.get("cell")
    if cell:
        row["n"] = cell["n"]
        for key in ("accuracy", "sensitivity", "specificity", "auc"):
            row[key] = cell[key]["value"]
            row[f"{key}_lo"], row[f"{key}_hi"] = cell[key]["ci95"]
        row["f1"] = cell["f1"]
    pat = acc.get("patient")
    if pat:
        row["patients"] = pat["patients"]
        row["patient_fraction_mae_pts"] = pat["fraction_mae_points"]
        for key in ("sensitivity", "specificity"):
            row[f"patient_{key}"] = pat[key]["value"]
            row[f"patient_{key}_lo"], row[f"patient_{key}_hi"] = pat[key]["ci95"]
        row["patients_referred"] = pat["referred"]
    return row
