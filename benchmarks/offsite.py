"""Bundles on other microscopes' fields: IML *P. vivax* fields (labelled cells) and BCCD (healthy).

    python -m edgekit.benchmarks.offsite old=edgekit/models/default new=runs/fast/bundle \\
        [--iml ../shared/data/malaria_fields_iml] [--bccd ../shared/data/blood_smear_fields_bccd] \\
        [--bccd-every 4] [--out results.json]

Every field goes through the device's own pipeline once (quality check + segmentation,
``count_cells``; crops by ``crop_cell``), and every bundle classifies the same crops through its
own preprocessing (``classify_crops``), so the bundles differ only in their model and manifest.

- IML cells: each labelled box is matched one-to-one to a found cell (IoU >= 0.4, as
  ``edgekit cells`` does); cell AUC, and sensitivity/specificity at the manifest's cutoff.
- IML fields: parasitemia = found cells called parasitized at the cutoff / found cells (what
  ``edgekit field`` reports) against the labelled one (parasite boxes / labelled boxes), mean
  absolute error in percentage points; all fields, per stain group, and the test blocks of
  ``edgekit.cells.block_split`` (blocks of 6 consecutive frames within each stain group, seed 0).
- BCCD fields (no malaria): parasitemia should be 0; mean over every ``--bccd-every``-th field.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edgekit.paths import shared_data

_CACHE: Path | None = None  # --cache: segmentation results per field, reused by later runs


def _field_crops(image: Path) -> tuple[tuple[int, int], list, list[np.ndarray], str | None]:
    """(field height/width, cell boxes, crops, rejection reason) of one field, from the cache if there."""
    import hashlib

    from edgekit.device.field import count_cells, crop_cell
    from edgekit.device.preprocess import read_image

    key = None
    if _CACHE is not None:
        key = _CACHE / (hashlib.sha256(str(Path(image).resolve()).encode()).hexdigest()[:20] + ".npz")
        if key.is_file():
            with np.load(key) as z:
                sizes = z["sizes"]
                flat = np.split(z["pixels"], np.cumsum(sizes.prod(1))[:-1]) if len(sizes) else []
                crops = [f.reshape(tuple(sz)) for f, sz in zip(flat, sizes, strict=True)]
                reason = str(z["reason"]) or None
                return tuple(z["hw"]), [tuple(b) for b in z["boxes"]], crops, reason
    rgb = read_image(image)
    cells, _, reason = count_cells(rgb)
    crops = [crop_cell(rgb, c) for c in cells]
    boxes = [c.box for c in cells]
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        sizes = np.array([c.shape for c in crops], np.int64).reshape(-1, 3)
        pixels = np.concatenate([c.ravel() for c in crops]) if crops else np.zeros(0, np.uint8)
        np.savez(key, hw=np.array(rgb.shape[:2]), boxes=np.array(boxes, np.int64).reshape(-1, 4),
                 sizes=sizes, pixels=pixels, reason=np.array(reason or ""))
    return rgb.shape[:2], boxes, crops, reason


def _cell_metrics(y: np.ndarray, p: np.ndarray, cutoff: float) -> dict:
    from edgekit.metrics import roc_auc

    called = p >= cutoff
    pos, neg = y == 1, y == 0
    return {"cells": int(len(y)), "parasitized": int(pos.sum()),
            "auc": float(roc_auc(pos, p)) if pos.any() and neg.any() else None,
            "sensitivity": float(called[pos].mean()) if pos.any() else None,
            "specificity": float((~called[neg]).mean()) if neg.any() else None}


def _field_summary(rows: list[dict], key: str) -> dict:
    if not rows:
        return {"fields": 0}
    err = [abs(r[key] - r["truth"]) * 100 for r in rows if r[key] is not None]
    return {"fields": len(rows), "mae_points": float(np.mean(err)) if err else None,
            "median_abs_error_points": float(np.median(err)) if err else None,
            "mean_predicted_pct": float(np.mean([r[key] for r in rows if r[key] is not None]) * 100),
            "mean_truth_pct": float(np.mean([r["truth"] for r in rows]) * 100)}


def run_iml(bundles: dict, folder: Path, log, every: int = 1) -> dict:
    from edgekit.cells import block_split, iml_stain_group, match_boxes
    from edgekit.device.annotations import read_annotations
    from edgekit.device.field import classify_crops

    fields = read_annotations(folder / "annotations.json", folder / "images")[::every]
    cells_y: list[int] = []
    cells_field: list[str] = []
    probs: dict[str, list[float]] = {k: [] for k in bundles}
    rows = []
    t0 = time.perf_counter()
    for n, af in enumerate(fields, 1):
        (h, w), boxes, crops, reason = _field_crops(af.image)
        af = af.fitted(w, h)
        labelled = [b for b in af.boxes if b.label]
        truth = sum(b.label == "Parasitized" for b in labelled) / max(1, len(labelled))
        row = {"field": af.name, "group": iml_stain_group(af.name), "truth": truth, "found": len(boxes),
               "rejected": reason}
        p_all = {k: np.array(classify_crops(crops, clf)) if crops else np.zeros(0)
                 for k, clf in bundles.items()}
        for k, clf in bundles.items():
            row[k] = float(clf.manifest.decision.counted(p_all[k]).mean()) if len(p_all[k]) else None
        for i, j, _ in match_boxes(af.boxes, boxes, 0.4):
            b = af.boxes[i]
            if b.label is None:
                continue
            cells_y.append(int(b.label == "Parasitized"))
            cells_field.append(af.name)
            for k in bundles:
                probs[k].append(float(p_all[k][j]))
        rows.append(row)
        if n % 20 == 0:
            log(f"IML {n}/{len(fields)} fields, {time.perf_counter() - t0:.0f} s")
    y = np.array(cells_y)
    fnames = np.array(cells_field)
    test = set(block_split([r["field"] for r in rows], group_of=iml_stain_group)["test"])
    out: dict = {"fields": rows, "bundles": {}}
    in_test = np.isin(fnames, list(test))
    groups = np.array([iml_stain_group(f) for f in fnames])
    for k, clf in bundles.items():
        p = np.array(probs[k])
        cut = clf.manifest.thresholds.cutoff
        out["bundles"][k] = {
            "cutoff": cut,
            "cells_all": _cell_metrics(y, p, cut),
            "cells_test_blocks": _cell_metrics(y[in_test], p[in_test], cut),
            **{f"cells_{g}": _cell_metrics(y[groups == g], p[groups == g], cut)
               for g in ("grey-green", "magenta")},
            "fields_all": _field_summary(rows, k),
            "fields_test_blocks": _field_summary([r for r in rows if r["field"] in test], k),
            **{f"fields_{g}": _field_summary([r for r in rows if r["group"] == g], k)
               for g in ("grey-green", "magenta")},
        }
    return out


def run_bccd(bundles: dict, folder: Path, every: int, log) -> dict:
    from edgekit.device.field import classify_crops

    images = sorted((folder / "JPEGImages").glob("*.jpg"))[::every]
    rows = []
    for n, image in enumerate(images, 1):
        _, boxes, crops, reason = _field_crops(image)
        row = {"field": image.name, "found": len(boxes), "rejected": reason}
        for k, clf in bundles.items():
            p = np.array(classify_crops(crops, clf)) if crops else np.zeros(0)
            row[k] = float(clf.manifest.decision.counted(p).mean()) if len(p) else None
        rows.append(row)
        if n % 20 == 0:
            log(f"BCCD {n}/{len(images)} fields")
    summary = {}
    for k in bundles:
        vals = [r[k] for r in rows if r[k] is not None]
        summary[k] = {"fields": len(vals), "mean_parasitemia_pct": float(np.mean(vals) * 100),
                      "median_parasitemia_pct": float(np.median(vals) * 100),
                      "fields_above_5pct": int(sum(v > 0.05 for v in vals))}
    return {"fields": rows, "bundles": summary}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", metavar="NAME=BUNDLE")
    ap.add_argument("--iml", type=Path, default=shared_data("malaria_fields_iml"))
    ap.add_argument("--bccd", type=Path, default=shared_data("blood_smear_fields_bccd"))
    ap.add_argument("--iml-every", type=int, default=1, help="every Nth IML field (1: all 172)")
    ap.add_argument("--bccd-every", type=int, default=4, help="every Nth BCCD field (0: none)")
    ap.add_argument("--format", default="tflite_int8")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--cache", type=Path, help="keep each field's segmentation here for later runs")
    args = ap.parse_args(argv)
    global _CACHE
    _CACHE = args.cache

    from edgekit.device.runtime import load_classifier

    bundles = {}
    for spec in args.bundles:
        name, _, path = spec.partition("=")
        bundles[name] = load_classifier(path, fmt=args.format, threads=1)
    log = lambda s: print(s, flush=True)  # noqa: E731
    result = {"format": args.format, "bundles": {k: str(v) for k, v in
                                                  (s.partition("=")[::2] for s in args.bundles)}}
    if args.iml.is_dir():
        result["iml"] = run_iml(bundles, args.iml, log, args.iml_every)
    if args.bccd.is_dir() and args.bccd_every > 0:
        result["bccd"] = run_bccd(bundles, args.bccd, args.bccd_every, log)
    print(json.dumps({part: result[part]["bundles"] for part in ("iml", "bccd") if part in result}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
