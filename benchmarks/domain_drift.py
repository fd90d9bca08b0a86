"""Does a site bundle's domain guard see its own microscope drift? A stain change on IML_Malaria.

    python -m edgekit.benchmarks.domain_drift --cells IML_CELLS  # -> benchmarks/results/domain_drift_iml.json

IML_CELLS comes from ``edgekit cells ../shared/data/malaria_fields_iml/images --annotations
.../annotations.json -o IML_CELLS`` (the labelled cells a site adapts on). The 172 dev fields hold
two stain looks: grey-green, then strongly magenta from **PA171809** on (the data README says
PA171810; by colour PA171809 is already magenta: cell Lab a* median 173, grey-green fields 122-133,
magenta 171-181; ``stain_check`` in the results).

For each direction (a guard fitted on one stain, facing the other):
- the stain's fields are cut into blocks of 6 consecutive frames; **each block is held out once**
  (5 folds, blocks dealt round-robin: fold k is test, fold k+1 validation, the rest training), so
  every field of the stain is a held-out field exactly once;
- the guard is fitted as ``edgekit adapt`` fits it (:func:`edgekit.domain_fit.fit_site_features`):
  statistics from the training fields' labelled cells, thresholds from the validation fields'
  labelled cells only;
- measured as the device measures (:func:`edgekit.device.domain.field_verdict` /
  ``session_verdict`` on every cell the device's own field pipeline finds, labelled or not):
  held-out fields and blocks (a "session": 6 consecutive fields) of the same stain should pass;
  every field and block of the other stain should be flagged;
- the same with adapt's own split (``edgekit.cells.block_split``, 60/20/20, seeds 0-9; a field is
  held out in several rotations, so counts are field-rotations);
- how tight: held-out fields of the same stain with their cells' optical density moved a fraction
  of the way towards the other stain (synthetic, 40 labelled cells per field);
- margin sweep: the same folds at other multiples of the highest validation score (context for
  ``SITE_MARGIN``; the margin was chosen on these fields, the only site data there is).

Cell features are cached (``--cache``), so reruns take seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.paths import shared_data

FIRST_MAGENTA = "PA171809"  # first field of IML's second stain look (measured; see the module doc)
BLOCK = 6
FOLDS = 5
SHIFTS = (0.1, 0.2, 0.3, 0.5)
MARGINS = (1.1, 1.5, 2.0, 2.5, 3.0)
SYNTH_CELLS = 40


def stain(field: str) -> str:
    """``grey-green`` or ``magenta``."""
    return "magenta" if field >= FIRST_MAGENTA else "grey-green"


def _cached(path: Path, make) -> dict[str, np.ndarray]:
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        return {k: z[k] for k in z.files}
    out = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def labelled_table(cells: Path, cache: Path) -> dict[str, np.ndarray]:
    """Features of every labelled crop of ``edgekit cells``' output, with its field and file."""
    from edgekit.cells import field_of
    from edgekit.domain_fit import crop_table

    def make() -> dict[str, np.ndarray]:
        files = sorted(cells.glob("*/*.png"))
        F, lit, kept = crop_table(files)
        return {"F": F, "lit": lit, "field": np.array([field_of(files[k]) for k in kept]),
                "path": np.array([str(files[k]) for k in kept])}

    return _cached(cache / "labelled.npz", make)


def found_table(images: Path, cache: Path) -> dict[str, np.ndarray]:
    """Features of every cell the device's field pipeline finds on each field."""
    from edgekit.domain_fit import field_table

    def make() -> dict[str, np.ndarray]:
        F, names, rejected = field_table(sorted(images.glob("*.JPG")))
        return {"F": F, "field": np.array([Path(n).stem for n in names]),
                "rejected": np.array(sorted(rejected), dtype=str)}

    return _cached(cache / "found.npz", make)


def _rate(flags: list[bool]) -> dict[str, Any]:
    from edgekit.metrics import wilson_interval

    k, n = int(sum(flags)), len(flags)
    return {"k": k, "n": n, "rate": round(k / n, 4) if n else None,
            "ci95": [round(x, 4) for x in wilson_interval(k, n)] if n else None}


def round_robin_folds(fields: list[str]) -> list[dict[str, list[str]]]:
    """Blocks of ``BLOCK`` consecutive fields dealt round-robin to ``FOLDS`` folds; fold k is test,
    k+1 validation, the rest training: every block is held out once."""
    blocks = [fields[i : i + BLOCK] for i in range(0, len(fields), BLOCK)]
    folds = []
    for k in range(FOLDS):
        part = {"train": [], "val": [], "test": []}
        for i, b in enumerate(blocks):
            part["test" if i % FOLDS == k else "val" if i % FOLDS == (k + 1) % FOLDS else "train"] += b
        folds.append(part)
    return folds


def _scores_by(scores: np.ndarray, groups: np.ndarray, names: list[str]) -> dict[str, list[float]]:
    return {n: scores[groups == n].tolist() for n in names}


def _blocks(fields: list[str]) -> list[list[str]]:
    from edgekit.domain_fit import consecutive_sessions

    return list(consecutive_sessions(fields, BLOCK).values())


def od_shift(rgb: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The crop with every cell pixel's optical density moved by ``delta`` (per channel)."""
    fg = rgb.max(axis=2) > 16
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0) + delta.astype(np.float32)
    out = np.clip(256.0 * np.exp(-od) - 1.0, 17, 255).astype(np.uint8)
    out[~fg] = 0
    return out


def stain_delta(lab: dict[str, np.ndarray]) -> np.ndarray:
    """Median cell optical density (R, G, B) of the magenta fields minus the grey-green ones."""
    import cv2

    from edgekit.device.preprocess import read_image

    rng = np.random.default_rng(0)
    med = {}
    for s in ("grey-green", "magenta"):
        files = lab["path"][np.array([stain(f) == s for f in lab["field"]])]
        px = []
        for f in rng.choice(files, 300, replace=False):
            rgb = read_image(f)
            inner = cv2.erode((rgb.max(axis=2) > 16).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
            px.append(np.median(rgb[inner], axis=0))
        med[s] = -np.log((np.median(px, axis=0) + 1.0) / 256.0)
    return med["magenta"] - med["grey-green"]


def run_direction(own: str, other: str, lab: dict[str, np.ndarray], found: dict[str, np.ndarray],
                  groups: dict[str, list[str]], delta: np.ndarray, synth: bool) -> dict[str, Any]:
    from edgekit.cells import block_split
    from edgekit.device.domain import crop_features, distances, field_verdict, session_verdict
    from edgekit.device.preprocess import read_image
    from edgekit.domain_fit import fit_site_features

    sign = 1.0 if own == "grey-green" else -1.0

    def fit(part: dict[str, list[str]]):
        tr, va = np.isin(lab["field"], part["train"]), np.isin(lab["field"], part["val"])
        return fit_site_features(lab["F"][tr], lab["lit"][tr], lab["F"][va], lab["field"][va].tolist(),
                                 source=f"IML {own} training fields")

    def verdicts(domain, names: list[str]) -> dict[str, Any]:
        d = distances(found["F"], domain)
        by = _scores_by(d, found["field"], names)
        fields = {n: field_verdict(s, domain) for n, s in by.items() if s}
        sessions = {f"{b[0]}..{b[-1]}": session_verdict([x for n in b for x in by.get(n, [])], domain)
                    for b in _blocks(names)}
        return {"fields": fields, "sessions": sessions}

    out: dict[str, Any] = {"own": own, "other": other, "folds": []}
    own_f, own_s, oth_f, oth_s = [], [], [], []
    margin_rows: dict[float, list[list[float]]] = {}
    shifted: dict[float, list[bool]] = {f: [] for f in SHIFTS}
    for k, part in enumerate(round_robin_folds(groups[own])):
        domain, rep = fit(part)
        test = verdicts(domain, part["test"])
        oth = verdicts(domain, groups[other])
        flagged = sorted(n for n, v in test["fields"].items() if not v["ok"])
        own_f += [not v["ok"] for v in test["fields"].values()]
        own_s += [not v["ok"] for v in test["sessions"].values()]
        oth_f += [not v["ok"] for v in oth["fields"].values()]
        oth_s += [not v["ok"] for v in oth["sessions"].values()]
        hi_val = max(rep["val_fields"].values())
        for m in MARGINS:
            row = margin_rows.setdefault(m, [[], []])
            row[0] += [v["score"] > m * hi_val for v in test["fields"].values()]
            row[1] += [v["score"] > m * hi_val for v in oth["fields"].values()]
        out["folds"].append({
            "fold": k, "train_fields": len(part["train"]), "val_fields": len(part["val"]),
            "test_fields": len(part["test"]), "field_threshold": domain.field_threshold,
            "session_threshold": domain.session_threshold, "highest_val_field": round(hi_val, 3),
            "test_field_scores_max": max(v["score"] for v in test["fields"].values()),
            "other_field_scores_min": min(v["score"] for v in oth["fields"].values()),
            "own_test_fields_flagged": flagged,
        })
        if synth:  # held-out fields, their cells moved towards the other stain
            for n in part["test"]:
                files = lab["path"][lab["field"] == n][:SYNTH_CELLS]
                crops = [read_image(f) for f in files]
                for frac in SHIFTS:
                    feats = [crop_features(od_shift(c, sign * frac * delta)) for c in crops]
                    s = distances(np.stack([f for f in feats if f is not None]), domain).tolist()
                    shifted[frac].append(not field_verdict(s, domain)["ok"])
    out["each_block_held_out_once"] = {
        "own_stain_fields_flagged": _rate(own_f), "own_stain_sessions_flagged": _rate(own_s),
        "other_stain_fields_flagged": {**_rate(oth_f), "note": f"every {other} field, once per fold"},
        "other_stain_sessions_flagged": _rate(oth_s),
        "blocks_held_out": len(own_s),
    }
    if synth:
        out["own_fields_shifted_towards_other_stain_flagged"] = {
            f"{frac:g}": _rate(v) for frac, v in shifted.items()}
    out["margin_sweep"] = {f"{m:g}": {"own_fields_flagged": _rate(r[0])["rate"],
                                     "other_fields_flagged": _rate(r[1])["rate"]}
                           for m, r in margin_rows.items()}
    # adapt's own split: blocks dealt at random, 60/20/20
    rf, rs, of_ = [], [], []
    for seed in range(10):
        part = block_split(groups[own], (0.6, 0.2, 0.2), BLOCK, seed=seed)
        domain, _ = fit(part)
        test = verdicts(domain, part["test"])
        oth = verdicts(domain, groups[other])
        rf += [not v["ok"] for v in test["fields"].values()]
        rs += [not v["ok"] for v in test["sessions"].values()]
        of_ += [not v["ok"] for v in oth["fields"].values()]
    out["adapt_block_split_seeds_0_9"] = {
        "own_stain_field_rotations_flagged": _rate(rf), "own_stain_session_rotations_flagged": _rate(rs),
        "other_stain_field_rotations_flagged": _rate(of_)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=Path, required=True, help="`edgekit cells` output for the IML fields")
    ap.add_argument("--images", type=Path, default=None, help="IML field images (default: shared data)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/edgekit-drift-cache"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/domain_drift_iml.json"))
    ap.add_argument("--no-synthetic", action="store_true", help="Skip the shifted-stain fields.")
    args = ap.parse_args(argv)
    t0 = time.time()
    images = args.images or shared_data("malaria_fields_iml") / "images"
    lab = labelled_table(args.cells, args.cache)
    found = found_table(images, args.cache)
    fields = sorted(set(lab["field"].tolist()))
    groups = {s: [f for f in fields if stain(f) == s] for s in ("grey-green", "magenta")}
    a_star = {f: float(np.median(lab["F"][lab["field"] == f, 3])) for f in fields}
    delta = stain_delta(lab)
    from edgekit.domain_fit import SITE_MARGIN

    result: dict[str, Any] = {
        "command": f"python -m edgekit.benchmarks.domain_drift --cells {args.cells}",
        "site_margin": SITE_MARGIN, "block": BLOCK, "folds": FOLDS,
        "fields": {s: len(v) for s, v in groups.items()},
        "found_cells": int(len(found["F"])), "labelled_cells": int(len(lab["F"])),
        "stain_check": {
            "first_magenta": FIRST_MAGENTA,
            "median_cell_a_star": {f: a_star[f] for f in fields if "PA171806" <= f <= "PA171812"},
            "grey_green_range": [min(a_star[f] for f in groups["grey-green"]),
                                 max(a_star[f] for f in groups["grey-green"])],
            "magenta_range": [min(a_star[f] for f in groups["magenta"]),
                              max(a_star[f] for f in groups["magenta"])],
        },
        "stain_od_delta_magenta_minus_grey": np.round(delta, 3).tolist(),
        "directions": [
            run_direction("grey-green", "magenta", lab, found, groups, delta, not args.no_synthetic),
            run_direction("magenta", "grey-green", lab, found, groups, delta, not args.no_synthetic),
        ],
    }
    result["seconds"] = round(time.time() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for d in result["directions"]:
        e = d["each_block_held_out_once"]
        print(f"guard fitted on {d['own']}: own held-out fields flagged {e['own_stain_fields_flagged']['k']}/"
              f"{e['own_stain_fields_flagged']['n']}, sessions {e['own_stain_sessions_flagged']['k']}/"
              f"{e['own_stain_sessions_flagged']['n']}; {d['other']} fields flagged "
              f"{e['other_stain_fields_flagged']['k']}/{e['other_stain_fields_flagged']['n']}, sessions "
              f"{e['other_stain_sessions_flagged']['k']}/{e['other_stain_sessions_flagged']['n']}")
        r = d["adapt_block_split_seeds_0_9"]
        print(f"  adapt's split x10: own {r['own_stain_field_rotations_flagged']['rate']}, other "
              f"{r['other_stain_field_rotations_flagged']['rate']}")
        if "own_fields_shifted_towards_other_stain_flagged" in d:
            print("  shifted towards the other stain:", {k: v["rate"] for k, v in
                                                         d["own_fields_shifted_towards_other_stain_flagged"].items()})
        print("  margin sweep:", d["margin_sweep"])
    print(f"wrote {args.out} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
