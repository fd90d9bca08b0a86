# pyright: basic
"""``edgekit evaluate RUN --split test``: predict one part of the run's split with the Keras model
and write ``eval_<part>.json``, ``report_<part>.txt`` and ``roc_<part>.png``; the headline metrics
go into ``manifest.evaluation[<part>]``. Matplotlib (Agg) is imported only inside the plot helpers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import DataError
from edgekit.manifest import Decision, atomic_write_text, json_default, load_manifest, verify_artifact
from edgekit.metrics import binary_metrics, proportion, roc_curve


def patient_table(groups: np.ndarray, y_pos: np.ndarray, called_pos: np.ndarray) -> list[dict[str, Any]]:
    """Per patient: crops, labelled vs predicted positive fraction (the patient-level view)."""
    rows = []
    for g in np.unique(groups):
        sel = groups == g
        rows.append({"patient": str(g), "cells": int(sel.sum()),
                     "labelled_fraction": float(y_pos[sel].mean()),
                     "predicted_fraction": float(called_pos[sel].mean())})
    return rows


def per_class_report(y: np.ndarray, pred: np.ndarray, labels: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """Precision/recall/F1/support per class and the confusion matrix (rows: true, cols: predicted)."""
    k = len(labels)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y, pred), 1)
    per_class: dict[str, Any] = {}
    width = max(12, *(len(c) for c in labels))
    lines = [f"{'':{width}s} {'precision':>9s} {'recall':>9s} {'f1':>9s} {'support':>9s}"]
    for i, c in enumerate(labels):
        tp, support, called = cm[i, i], cm[i].sum(), cm[:, i].sum()
        prec = tp / called if called else float("nan")
        rec = tp / support if support else float("nan")
        f1 = 2 * prec * rec / (prec + rec) if prec + rec and not math.isnan(prec + rec) else float("nan")
        per_class[c] = {"precision": prec, "recall": rec, "f1": f1, "support": int(support)}
        lines.append(f"{c:{width}s} {prec:9.4f} {rec:9.4f} {f1:9.4f} {support:9d}")
    acc = float(np.trace(cm) / max(1, cm.sum()))
    lines.append(f"{'accuracy':{width}s} {'':9s} {'':9s} {acc:9.4f} {int(cm.sum()):9d}")
    lines.append("")
    lines.append("confusion matrix (rows: true, columns: predicted)")
    lines.append(" " * width + " " + " ".join(f"{c[:9]:>9s}" for c in labels))
    for i, c in enumerate(labels):
        lines.append(f"{c:{width}s} " + " ".join(f"{v:9d}" for v in cm[i]))
    return "\n".join(lines) + "\n", {"per_class": per_class, "confusion_matrix": cm.tolist(), "accuracy": acc}


def evaluate_arrays(y: np.ndarray, probs: np.ndarray, groups: np.ndarray,
                    decision: Decision) -> tuple[dict[str, Any], str]:
    """Metrics dict and report text from true labels and probabilities (no TensorFlow); cells are
    called as ``decision`` (the manifest's) counts them."""
    labels, positive_label, cutoff = decision.labels, decision.positive_label, decision.cutoff
    pos = decision.positive_index
    if len(labels) == 2 and pos is not None:
        p = probs[:, pos]
        called = decision.counted(p)
        pred = np.where(called, pos, 1 - pos)
        result: dict[str, Any] = binary_metrics(y == pos, p, threshold=cutoff, groups=groups)
        result["patients"] = patient_table(groups, y == pos, called)
    else:
        pred = probs.argmax(1)
        result = {"n": int(len(y))}
    text, extras = per_class_report(y, pred, labels)
    result["per_class"], result["confusion_matrix"] = extras["per_class"], extras["confusion_matrix"]
    if "accuracy" not in result:
        result["accuracy"] = proportion(int((pred == y).sum()), len(y), empty=0.0)
    header = f"{len(y)} images, {len(np.unique(groups))} groups; cutoff {cutoff:.3f} on p({positive_label})\n"
    if "auc" in result:
        a, s, sp = result["auc"], result["sensitivity"], result["specificity"]
        header += (f"AUC {a['value']:.4f} [{a['ci95'][0]:.4f}, {a['ci95'][1]:.4f}] (bootstrap over groups); "
                   f"sensitivity {s['value']:.4f} [{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}]; "
                   f"specificity {sp['value']:.4f} [{sp['ci95'][0]:.4f}, {sp['ci95'][1]:.4f}]\n")
    return result, header + "\n" + text


def evaluate_run(
    run_dir: Path,
    part: str = "test",
    split_file: Path | None = None,
    data_root: Path | None = None,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = print,
    model: Any = None,
) -> dict[str, Any]:
    """Evaluate the run's Keras model on one part of its split and write the report files."""
    from edgekit.parts import load_part, predict_arrays
    from edgekit.paths import resolve_recorded
    from edgekit.splits import load_split

    run_dir = Path(run_dir)
    manifest = load_manifest(run_dir)
    tr = manifest.training
    split_path = Path(split_file) if split_file else resolve_recorded(tr.get("split_file", ""), run_dir)
    split, digest = load_split(split_path, data_root=data_root)
    if tr.get("split_sha256") and digest != tr["split_sha256"]:
        raise DataError(f"{split_path} is not the split this run was trained on (sha256 differs)")
    if part not in split.parts or not split.parts[part]:
        raise DataError(f"the split has no {part!r} part")
    if list(split.classes) != list(manifest.labels):
        raise DataError(f"split classes {split.classes} do not match the run's labels {manifest.labels}")
    if model is None:
        import keras

        model = keras.models.load_model(verify_artifact(run_dir, manifest.artifacts["keras"]), compile=False)
    arrays = load_part(split, part, manifest.preprocessing, cache_dir, log)
    probs = predict_arrays(model, arrays.x)
    result, text = evaluate_arrays(arrays.y, probs, arrays.groups, manifest.decision)
    result["skipped"] = len(arrays.skipped)
    eval_json = json.dumps(result, indent=1, default=json_default) + "\n"
    atomic_write_text(run_dir / f"eval_{part}.json", eval_json)
    atomic_write_text(run_dir / f"report_{part}.txt", text)
    if "auc" in result:
        assert manifest.positive_label is not None  # an AUC is computed for a positive label only
        pos = manifest.labels.index(manifest.positive_label)
        plot_roc(arrays.y == pos, probs[:, pos], result, run_dir / f"roc_{part}.png",
                 title=f"ROC, {part} split")
    manifest.evaluation[part] = {k: v for k, v in result.items() if k not in ("patients", "per_class")}
    manifest.save(run_dir)
    log(text.rstrip())
    return result


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(y_pos: np.ndarray, p: np.ndarray, result: dict[str, Any], path: Path,
             title: str = "ROC") -> None:
    """ROC curve with the AUC and its CI, and the operating point at the cutoff."""
    plt = _pyplot()
    fpr, tpr, _ = roc_curve(y_pos, p)
    a = result["auc"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.plot(fpr, tpr, lw=1.5, label=f"AUC {a['value']:.4f} [{a['ci95'][0]:.4f}, {a['ci95'][1]:.4f}]")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    s, sp = result["sensitivity"]["value"], result["specificity"]["value"]
    ax.plot([1 - sp], [s], "o", label=f"cutoff {result['threshold']:.3f}")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Train/validation loss and accuracy per epoch."""
    if not history:
        return
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            vals = [r.get(prefix + key, float("nan")) for r in history]
            ax.plot(epochs, vals, style, marker="o", ms=3, label=(prefix or "train_") + key)
        if key == "accuracy" and any("val_auc" in r for r in history):
            auc = [r.get("val_auc", float("nan")) for r in history]
            ax.plot(epochs, auc, ":", marker="o", ms=3, label="val_auc")
        ax.set(xlabel="epoch", title=key)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
