"""Domain guard benchmark: fit the default bundle's training-cell statistics, choose the thresholds,
and measure how often in-domain sessions are wrongly flagged and off-site fields caught.

    python -m edgekit.benchmarks.domain_guard --bundle edgekit/models/default --write \\
        --out benchmarks/results/domain_guard.json

- NIH crops (``$EDGEKIT_DATA/malaria_cells``), split by patient as in
  ``benchmarks/results/malaria_split_patients.json`` (seed 42): statistics from the **training**
  patients, thresholds from the **validation** patients, rates on the **test** patients. A session
  is one patient's crops; an in-domain "field" (NIH has no fields) is a random draw of a field's worth
  of cells from one patient.
- Off-site fields (IML *P. vivax*, BCCD healthy blood): cells cut by the device's own field
  segmentation. Each set is split into **dev** and **test** by blocks of consecutive frames (IML:
  blocks of 10 inside each of its two stain groups; BCCD: blocks of 20 by image number), dev and test
  blocks alternating: thresholds see dev blocks only, rates are on test blocks. An off-site session
  is 8 consecutive test fields.
- Single crops: NIH test crops (should pass), grayscale copies of them, random noise and whole
  fields given as crops (should all be rejected by ``check_quality`` with the bundle's domain).

Features are cached (``--cache``) so reruns are quick; the dev field list is written next to the
results (``domain_dev_fields.txt``) so ``edgekit domain fit`` can reproduce the fit.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.benchmarks.synthetic import compose_field
from edgekit.paths import shared_data

IML_STAIN_SPLIT = "PA171809.JPG"  # fields up to this one are grey-green, later ones magenta
SESSION_FIELDS = 8


def blocks(names: list[str], size: int) -> tuple[list[str], list[str]]:
    """(dev, test) from sorted names: consecutive blocks of ``size``, alternating dev, test."""
    dev, test = [], []
    for i in range(0, len(names), size):
        (dev if (i // size) % 2 == 0 else test).extend(names[i : i + size])
    return dev, test


def offsite_split() -> dict[str, dict[str, list[str]]]:
    """Dev/test field names (relative to the data root) of IML and BCCD, by blocks of consecutive frames."""
    iml = sorted(p.name for p in (shared_data("malaria_fields_iml") / "images").glob("*.JPG"))
    grey = [n for n in iml if n <= IML_STAIN_SPLIT]
    magenta = [n for n in iml if n > IML_STAIN_SPLIT]
    d1, t1 = blocks(grey, 10)
    d2, t2 = blocks(magenta, 10)
    bccd = sorted(p.name for p in (shared_data("blood_smear_fields_bccd") / "JPEGImages").glob("*.jpg"))
    d3, t3 = blocks(bccd, 20)
    return {
        "iml": {
            "dev": [f"malaria_fields_iml/images/{n}" for n in d1 + d2],
            "test": [f"malaria_fields_iml/images/{n}" for n in t1 + t2],
        },
        "bccd": {
            "dev": [f"blood_smear_fields_bccd/JPEGImages/{n}" for n in d3],
            "test": [f"blood_smear_fields_bccd/JPEGImages/{n}" for n in t3],
        },
    }


def _cached(cache: Path, name: str, make):
    path = cache / f"{name}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        return {k: z[k] for k in z.files}
    out = make()
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def nih_features(
    cache: Path, patients: dict[str, list[str]], train_crops: int = 3000
) -> dict[str, np.ndarray]:
    """Features of every validation and test crop and of ``train_crops`` random training crops (a
    9-feature mean and covariance need no more; the shared 2-core machine does not allow more)."""
    from edgekit.domain_fit import crop_table

    def make():
        root = shared_data("malaria_cells")
        rows = list(csv.DictReader(open(root / "manifest.csv")))
        train = [i for i, r in enumerate(rows) if r["patient"] in set(patients["train"])]
        keep = set(
            np.random.default_rng(0).choice(train, min(train_crops, len(train)), replace=False).tolist()
        )
        rows = [r for i, r in enumerate(rows) if i in keep or r["patient"] not in set(patients["train"])]
        F, lit, kept = crop_table(root / r["class"] / r["file"] for r in rows)
        return {
            "F": F,
            "lit": lit,
            "patient": np.array([rows[k]["patient"] for k in kept]),
            "cls": np.array([rows[k]["class"] for k in kept]),
            "name": np.array([rows[k]["file"] for k in kept]),
        }

    return _cached(cache, "nih", make)


def field_features(cache: Path, name: str, rel: list[str]) -> dict[str, np.ndarray]:
    from edgekit.domain_fit import field_table

    def make():
        F, names, rejected = field_table(shared_data() / r for r in rel)
        return {
            "F": F,
            "field": np.array(names, dtype=str),
            "rejected": np.array(sorted(rejected), dtype=str),
        }

    return _cached(cache, name, make)


def _rate(flags: list[bool]) -> dict[str, Any]:
    from edgekit.metrics import wilson_interval

    k, n = int(sum(flags)), len(flags)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": list(wilson_interval(k, n)) if n else None}


def _sessions(scores: np.ndarray, fields: np.ndarray, size: int = SESSION_FIELDS) -> list[float]:
    """Medians over every cell of ``size`` consecutive fields (in the order the fields come)."""
    order = list(dict.fromkeys(fields.tolist()))
    out = []
    for i in range(0, len(order) - size + 1, size):
        chosen = set(order[i : i + size])
        out.append(float(np.median(scores[np.isin(fields, list(chosen))])))
    return out


def synthetic_fields(domain, by_patient: dict[str, list[Path]], per_field: int = 20) -> dict[str, Any]:
    """One synthetic field of ``per_field`` random crops per patient, segmented and cut by the device:
    is the field verdict still ok when the device, not NIH, cuts the cells?"""
    from edgekit.device.domain import cell_scores, field_verdict
    from edgekit.device.field import count_cells, crop_cell
    from edgekit.device.preprocess import read_image

    flags, scores, unusable = [], {}, []
    for i, (patient, files) in enumerate(sorted(by_patient.items())):
        chosen = [files[k] for k in np.random.default_rng(i).permutation(len(files))[:per_field]]
        rgb, _ = compose_field([read_image(f) for f in chosen], seed=i, gap=40)
        cells, _, reason = count_cells(rgb)
        if reason:
            unusable.append(patient)
            continue
        v = field_verdict(cell_scores([crop_cell(rgb, c) for c in cells], domain), domain)
        flags.append(not v["ok"])
        scores[patient] = v["score"]
    return {**_rate(flags), "field_scores": scores, "device_rejected_fields": unusable,
            "note": f"{per_field} random crops of one test patient pasted on a light background,"
                    " cut by the device"}


def crop_checks(domain, test_files: list[Path], field_files: list[Path], seed: int = 0) -> dict[str, Any]:
    """Single images through ``check_quality`` with the bundle's domain: real NIH test crops,
    grayscale copies of them, random noise, and whole fields passed as crops."""
    import cv2

    from edgekit.device.preprocess import read_image
    from edgekit.device.quality import check_quality

    rng = np.random.default_rng(seed)
    res: dict[str, list[bool]] = {
        "nih_test_crops_rejected": [],
        "grayscale_copies_rejected": [],
        "noise_rejected": [],
        "fields_as_crops_rejected": [],
    }
    reasons: dict[str, dict[str, int]] = {k: {} for k in res}

    def run(key: str, img: np.ndarray) -> None:
        r = check_quality(img, domain=domain)
        res[key].append(r is not None)
        if r:
            short = r.split(" (")[0]
            reasons[key][short] = reasons[key].get(short, 0) + 1

    for f in test_files:
        rgb = read_image(f)
        run("nih_test_crops_rejected", rgb)
        g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        run("grayscale_copies_rejected", np.repeat(g[:, :, None], 3, axis=2))
    for i in range(200):
        side = int(rng.integers(40, 300))
        kind = i % 4
        if kind == 0:
            img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        elif kind == 1:
            img = np.clip(rng.normal(128, 40, (side, side, 3)), 0, 255).astype(np.uint8)
        elif kind == 2:  # noise inside a disc on black, like a cell crop
            img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            yy, xx = np.mgrid[:side, :side]
            img[(yy - side / 2) ** 2 + (xx - side / 2) ** 2 > (side / 2) ** 2] = 0
        else:  # smooth coloured noise
            small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            img = cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC)
        run("noise_rejected", img)
    for f in field_files:
        run("fields_as_crops_rejected", read_image(f))
    return {k: {**_rate(v), "reasons": reasons[k]} for k, v in res.items()}


def main(argv: list[str] | None = None) -> int:
    from edgekit.device.domain import distances
    from edgekit.domain_fit import fit_domain, median_by_group, pseudo_fields
    from edgekit.manifest import load_manifest

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path("edgekit/models/default"))
    ap.add_argument("--split", type=Path, default=Path("benchmarks/results/malaria_split_patients.json"))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/edgekit-domain-cache"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/domain_guard.json"))
    ap.add_argument("--write", action="store_true", help="Store the fitted domain in the bundle's manifest.")
    args = ap.parse_args(argv)
    t0 = time.time()
    patients = json.loads(args.split.read_text())["patients"]
    nih = nih_features(args.cache, patients)
    split = offsite_split()
    (args.out.parent / "domain_dev_fields.txt").write_text(
        "# off-site dev fields of the domain guard (relative to $EDGEKIT_DATA),"
        " blocks of consecutive frames\n"
        + "\n".join(split["iml"]["dev"] + split["bccd"]["dev"])
        + "\n"
    )
    off = {
        f"{s}_{p}": field_features(args.cache, f"{s}_{p}", split[s][p])
        for s in split
        for p in ("dev", "test")
    }
    part = {p: np.isin(nih["patient"], patients[p]) for p in ("train", "val", "test")}
    dev_F = np.concatenate([off["iml_dev"]["F"], off["bccd_dev"]["F"]])
    dev_fields = np.concatenate([off["iml_dev"]["field"], off["bccd_dev"]["field"]])
    domain, fit_report = fit_domain(
        nih["F"][part["train"]],
        nih["lit"][part["train"]],
        nih["F"][part["val"]],
        nih["patient"][part["val"]].tolist(),
        dev_F,
        dev_fields.tolist(),
        source=(
            f"NIH malaria_cells training patients of {args.split.name} (seed 42); thresholds on its "
            f"{len(patients['val'])} validation patients and {len(set(dev_fields.tolist()))} IML/BCCD dev "
            "fields (blocks of consecutive frames, benchmarks/results/domain_dev_fields.txt)"
        ),
    )
    # ---- rates on held-out data
    d_test = distances(nih["F"][part["test"]], domain)
    sessions = median_by_group(d_test, nih["patient"][part["test"]].tolist())
    pf = pseudo_fields(d_test, nih["patient"][part["test"]].tolist(), fit_report["field_size"], seed=1)
    result: dict[str, Any] = {
        "command": "python -m edgekit.benchmarks.domain_guard --bundle edgekit/models/default --write",
        "bundle": load_manifest(args.bundle).name,
        "features": domain.features,
        "thresholds": {
            "field": domain.field_threshold,
            "session": domain.session_threshold,
            "min_cells": domain.min_cells,
            "min_chroma": domain.min_chroma,
            "max_border_lit": domain.max_border_lit,
            "max_crop_distance": domain.max_crop_distance,
        },
        "how_chosen": domain.source,
        "fit": fit_report,
        "nih_test": {
            "sessions_flagged": _rate([v > domain.session_threshold for v in sessions.values()]),
            "session_scores": sessions,
            "fields_flagged": {
                **_rate([v > domain.field_threshold for v in pf]),
                "note": f"{fit_report['field_size']} random cells of one test patient, 20 per patient",
            },
        },
    }
    for s in ("iml", "bccd"):
        t = off[f"{s}_test"]
        scores = distances(t["F"], domain)
        per_field = median_by_group(scores, t["field"].tolist())
        result[f"{s}_test"] = {
            "fields": len(split[s]["test"]),
            "fields_rejected_by_device": int(len(t["rejected"])),
            "cells": int(len(scores)),
            "fields_caught": _rate([v > domain.field_threshold for v in per_field.values()]),
            "sessions_caught": {
                **_rate([v > domain.session_threshold for v in _sessions(scores, t["field"])]),
                "note": f"{SESSION_FIELDS} consecutive test fields per session",
            },
            "field_score_percentiles_5_50_95": np.percentile(list(per_field.values()), [5, 50, 95])
            .round(3)
            .tolist(),
        }
        d_dev = off[f"{s}_dev"]
        dev_scores = median_by_group(distances(d_dev["F"], domain), d_dev["field"].tolist())
        result[f"{s}_dev"] = {
            "fields_caught": _rate([v > domain.field_threshold for v in dev_scores.values()])
        }
    root = shared_data("malaria_cells")
    test_rows = [r for r in csv.DictReader(open(root / "manifest.csv")) if r["patient"] in patients["test"]]
    rng = np.random.default_rng(0)
    pick = rng.choice(len(test_rows), min(500, len(test_rows)), replace=False)
    test_files = [root / test_rows[i]["class"] / test_rows[i]["file"] for i in sorted(pick)]
    field_files = [shared_data() / r for r in split["iml"]["test"][::4] + split["bccd"]["test"][::8]]
    result["single_crops"] = crop_checks(domain, test_files, field_files)
    by_patient: dict[str, list[Path]] = {}
    for r in test_rows:
        by_patient.setdefault(r["patient"], []).append(root / r["class"] / r["file"])
    result["nih_test"]["synthetic_fields_flagged"] = synthetic_fields(domain, by_patient)
    result["seconds"] = round(time.time() - t0, 1)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.write:
        m = load_manifest(args.bundle)
        m.domain = domain
        m.save(args.bundle)
    brief = {k: v for k, v in result.items() if k not in ("fit", "single_crops")}
    brief["nih_test"] = {k: v for k, v in result["nih_test"].items() if k != "session_scores"}
    print(json.dumps(brief, indent=1))
    print(
        json.dumps(
            {k: {kk: vv for kk, vv in v.items() if kk != "ci95"} for k, v in result["single_crops"].items()},
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
