"""Set and measure the focus floor and field identity (issue 22).

    python -m edgekit.benchmarks.focus_floor [--step N] [--no-write] [--rows CACHE.json]

Fields: real in-focus IML (1280x960, P. vivax) and BCCD (640x480) fields, and NIH-like fields
(NIH cell crops pasted on a stained-background canvas, 1200x900: NIH has no whole fields here).
Each is split by blocks of 10 consecutive frames (IML: within its two stain groups): even blocks
set the floor, odd blocks are held out. Every field is measured sharp and Gaussian-blurred
(sigma 1, 1.5, 2, 3, 4), each copy JPEG re-encoded (q90 or q70) or with sensor noise (std 4).
Also measured: the 364 plain BCCD fields as they are (no re-encoding, no noise), and sharp fields
rescaled 1.25x, 1.5x, 0.75x (a higher or lower magnification, a phone zoom) with their blurred
copies (every 2nd field; sigma in the rescaled field's pixels).
Each copy is scored by several measures side by side (:func:`candidates`: the old pixel-scale one,
with the noise correction, at a fixed number of pixels per cell radius); each one's floor is the
one minimising (sharp refused rate + sigma>=2 passed rate) on the calibration blocks of the native
sets (plain BCCD included, rescaled fields left out), and the session ratio is the lowest ratio of
a sharp calibration field to the sharpest of the SESSION_RECENT before it, rounded down to 0.05.
The old measure with its old floor (0.095) is reported too.
Held out: refused rate of sigma>=2 copies (want 100%), of sharp ones (want <= 1%), per set and
sigma, and the session rule (SESSION_RATIO x the sharpest of the last SESSION_RECENT fields) on
the sharp fields in order. Field identity: a retake (JPEG q70, 5% shift, 0.9x or 1/0.9x scale,
blur sigma 1) of each held-out field against its original, and every held-out field against its
neighbours.
Writes ``benchmarks/results/focus_floor.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from edgekit.paths import shared_data

HERE = Path(__file__).resolve().parent
SIGMAS = (0.0, 1.0, 1.5, 2.0, 3.0, 4.0)
BLOCK = 10


def _load(path: Path) -> np.ndarray:
    import cv2

    return np.ascontiguousarray(cv2.imread(str(path))[:, :, ::-1])


def nih_like(crops: list[Path], seed: int) -> np.ndarray:
    """An NIH-like field: ~60 NIH crops pasted (cell pixels only) on a pale stained canvas."""
    r = random.Random(seed)
    canvas = np.full((900, 1200, 3), (205, 190, 205), np.uint8)
    for _ in range(60):
        c = _load(r.choice(crops))
        h, w = c.shape[:2]
        if h >= 900 or w >= 1200:
            continue
        y, x = r.randrange(0, 900 - h), r.randrange(0, 1200 - w)
        m = (c.max(2) > 16)[..., None]
        canvas[y:y + h, x:x + w] = np.where(m, c, canvas[y:y + h, x:x + w])
    return canvas


def degrade(rgb: np.ndarray, sigma: float, mode: int, rng: np.random.Generator) -> np.ndarray:
    import cv2

    out = cv2.GaussianBlur(rgb, (0, 0), sigma) if sigma else rgb
    if mode == 2:
        return np.clip(out + rng.normal(0, 4, out.shape), 0, 255).astype(np.uint8)
    q = (90, 70)[mode]
    return cv2.imdecode(cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_UNCHANGED)


def retake(rgb: np.ndarray, k: int) -> np.ndarray:
    """The same field photographed again: 5% shift, 0.9x or 1/0.9x scale, blur sigma 1, JPEG q70."""
    import cv2

    h, w = rgb.shape[:2]
    s = 0.9 if k % 2 else 1 / 0.9
    dx, dy = 0.05 * w * (-1) ** k, 0.05 * h * (-1) ** (k // 2)
    m = np.float32([[s, 0, dx + (1 - s) * w / 2], [0, s, dy + (1 - s) * h / 2]])
    out = cv2.GaussianBlur(cv2.warpAffine(rgb, m, (w, h), borderMode=cv2.BORDER_REFLECT), (0, 0), 1.0)
    return cv2.imdecode(cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, 70])[1], cv2.IMREAD_UNCHANGED)


def iml_items(step: int, offset: int = 0) -> list[tuple[str, Path, bool]]:
    """IML fields as [(name, path, held_out)]: blocks of BLOCK consecutive frames alternating,
    within each stain group."""
    iml = sorted((shared_data("malaria_fields_iml") / "images").glob("*.JPG"))
    groups = [[p for p in iml if p.stem <= "PA171809"], [p for p in iml if p.stem > "PA171809"]]
    split = [[(p.name, p, (i // BLOCK) % 2 == 1) for i, p in enumerate(g)] for g in groups]
    return [item for g in split for item in g[offset::step]]


def field_sets(step: int, offset: int = 0) -> dict[str, list[tuple[str, np.ndarray, bool]]]:
    """name -> [(id, field, held_out)], blocks of BLOCK consecutive fields alternating; every
    ``step``-th field from ``offset`` (offset 1 with step 2: the fields step 2 leaves out)."""
    bccd = sorted((shared_data("blood_smear_fields_bccd") / "JPEGImages").glob("*.jpg"))
    cells = shared_data("malaria_cells")
    crops = sorted((cells / "Uninfected").glob("*"))[::50] + sorted((cells / "Parasitized").glob("*"))[::50]
    out: dict[str, list] = {"iml": iml_items(step, offset), "bccd": [], "nih_like": []}
    out["bccd"] = [(p.name, p, (i // BLOCK) % 2 == 1) for i, p in enumerate(bccd)][offset::step * 2]
    out["nih_like"] = [(f"seed{i}", i, (i // 5) % 2 == 1) for i in range(offset, 40, step)]
    loaded = {}
    for name, items in out.items():
        loaded[name] = [(i, nih_like(crops, src) if name == "nih_like" else _load(src), held)
                        for i, src, held in items]
    return loaded


OLD_FLOOR = 0.095  # the pixel-scale measure's floor before cell scale (issue 22)
PREVIOUS_FLOOR = 0.0958  # the noise-corrected measure's floor before the profile (issue 22)
FACTORS = (1.25, 1.5, 0.75)  # sharp fields rescaled (a higher / lower magnification, a phone zoom)


def candidates() -> list:
    """The measures compared: the pixel-scale one (the old default), cell-scale ones, with and
    without the noise correction, and the default (noise correction and profile)."""
    from edgekit.device.field.focus import FOCUS_MEASURE, FocusMeasure

    return [FocusMeasure(), FocusMeasure(noise=True), FocusMeasure(42.0),
            *(FocusMeasure(c, noise=True) for c in (36.0, 42.0)), FOCUS_MEASURE]


def _score_row(rgb: np.ndarray) -> dict:
    from edgekit.device.field.focus import FocusMeasure, edge_ratios, focus_score
    from edgekit.device.field.segment import cell_radius

    radius = cell_radius(rgb)
    return {"radius": round(radius, 1), "scores": {m.name: focus_score(rgb, radius, m) for m in candidates()},
            "edge_ratios": edge_ratios(rgb, radius, FocusMeasure(noise=True, profile=1.0))}


def score_rows(step: int, offset: int = 0) -> list[dict]:
    """Every copy measured with the pixel-scale measure and each cell-scale candidate: the sets
    sharp and blurred (SIGMAS, re-encoded or noisy), the plain BCCD fields as they are (no
    re-encoding, no noise), and sharp fields rescaled by FACTORS with their blurred copies (every
    2nd field; sigma in the rescaled field's pixels)."""
    from edgekit.benchmarks.field_transforms import rescale

    rng = np.random.default_rng(0)
    sets = field_sets(step, offset)
    rows = []
    for name, items in sets.items():
        for k, (fid, rgb, held) in enumerate(items):
            for factor in (1.0, *FACTORS):
                if factor != 1.0 and k % 2:
                    continue
                src = rgb if factor == 1.0 else rescale(rgb, factor)
                for sigma in SIGMAS:
                    mode = (k + int(sigma * 2)) % 3
                    rows.append({"set": name if factor == 1.0 else f"{name}_x{factor:g}", "field": fid,
                                 "held_out": held, "sigma": sigma, "mode": mode,
                                 **_score_row(degrade(src, sigma, mode, rng))})
    bccd = sorted((shared_data("blood_smear_fields_bccd") / "JPEGImages").glob("*.jpg"))
    for i in range(offset, len(bccd), step):
        rows.append({"set": "bccd_plain", "field": bccd[i].name, "held_out": (i // BLOCK) % 2 == 1,
                     "sigma": 0.0, "mode": -1, **_score_row(_load(bccd[i]))})
    return rows


def calibrate(rows: list[dict], measure: str) -> float:
    """The floor minimising (sharp refused rate + sigma>=2 passed rate) on the calibration copies
    of the native sets (IML, BCCD re-encoded or noisy, NIH-like, plain BCCD): midway between the
    two scores it falls between. Rescaled fields are left out: they measure how it generalises."""
    native = {"iml", "bccd", "nih_like", "bccd_plain"}
    cal = [r for r in rows if not r["held_out"] and r["set"] in native]
    return best_floor([r["scores"][measure] for r in cal if r["sigma"] == 0],
                      [r["scores"][measure] for r in cal if r["sigma"] >= 2])


def best_floor(sharp_scores: list[float], blur_scores: list[float]) -> float:
    """The cut minimising (sharp refused rate + blurred passed rate), midway between the two
    scores it falls between."""
    sharp, blur = np.sort(sharp_scores), np.sort(blur_scores)
    cuts = np.unique(np.concatenate([sharp, blur]))
    mids = np.concatenate([[cuts[0] - 1e-3], (cuts[:-1] + cuts[1:]) / 2, [cuts[-1] + 1e-3]])
    err = [np.searchsorted(sharp, m) / sharp.size + 1 - np.searchsorted(blur, m) / blur.size for m in mids]
    return round(float(mids[int(np.argmin(err))]), 4)


PROFILES = tuple(round(0.05 * k, 2) for k in range(0, 21))  # the exponents tried


def calibrate_profile(rows: list[dict]) -> tuple[float, list[dict]]:
    """The profile exponent (:func:`edgekit.device.field.focus.combine`) set on the calibration
    copies of the native sets: the fewest errors at its best floor, then the widest gap (in log
    score) between the softest sharp copy and the sharpest sigma>=2 one. Returns it and the table."""
    from edgekit.device.field.focus import combine

    native = {"iml", "bccd", "nih_like", "bccd_plain"}
    cal = [r for r in rows if not r["held_out"] and r["set"] in native]
    table = []
    for a in PROFILES:
        sharp = [combine(*r["edge_ratios"], a) for r in cal if r["sigma"] == 0]
        blur = [combine(*r["edge_ratios"], a) for r in cal if r["sigma"] >= 2]
        floor = best_floor(sharp, blur)
        errors = sum(v < floor for v in sharp) + sum(v >= floor for v in blur)
        gap = float(np.log(max(min(sharp), 1e-6)) - np.log(max(max(blur), 1e-6)))
        table.append({"profile": a, "floor": floor, "errors": int(errors), "log_gap": round(gap, 4)})
    best = min(table, key=lambda t: (t["errors"], -t["log_gap"]))
    return best["profile"], table


def calibrate_session_ratio(rows: list[dict], measure: str) -> float:
    """The session rule's ratio: the lowest ratio of a sharp calibration field to the sharpest of
    the SESSION_RECENT sharp fields before it (each set in frame order), rounded down to 0.05."""
    from edgekit.device.field.focus import SESSION_RECENT

    lowest = 1.0
    for name in {r["set"] for r in rows if "_x" not in r["set"]}:
        cal = [r for r in rows if r["set"] == name and not r["held_out"]]
        seq = [r["scores"][measure] for r in cal if r["sigma"] == 0]
        for i in range(1, len(seq)):
            lowest = min(lowest, seq[i] / max(max(seq[max(0, i - SESSION_RECENT):i]), 1e-6))
    return float(np.floor(lowest * 20) / 20)


def times_per_field(measures: list, repeats: int = 15) -> dict[str, float]:
    """Milliseconds per 1280x960 IML field for each measure (radius estimate included): best of
    ``repeats``, the measures taken in turn within each repeat so load hits them alike."""
    from edgekit.device.field.focus import focus_score

    rgb = _load(sorted((shared_data("malaria_fields_iml") / "images").glob("*.JPG"))[0])
    best = {m.name: float("inf") for m in measures}
    for _ in range(repeats):
        for m in measures:
            t = time.perf_counter()
            focus_score(rgb, measure=m)
            best[m.name] = min(best[m.name], time.perf_counter() - t)
    return {name: round(v * 1000, 1) for name, v in best.items()}


def summarise(rows: list[dict], measure: str, floor: float) -> dict:
    """Refused rates on the held-out copies, per set and sigma; and the totals."""
    held = [r for r in rows if r["held_out"]]

    def refused(sel: list[dict]) -> float | None:
        return round(float(np.mean([r["scores"][measure] < floor for r in sel])), 4) if sel else None

    per_set: dict[str, dict] = {}
    for name in sorted({r["set"] for r in held}):
        sel = [r for r in held if r["set"] == name]
        per_set[name] = {}
        for s in SIGMAS:
            if x := [r for r in sel if r["sigma"] == s]:
                median = round(float(np.median([r["scores"][measure] for r in x])), 4)
                per_set[name][f"sigma{s:g}"] = {"n": len(x), "refused": refused(x), "median": median}
    native = [r for r in held if r["set"] in ("iml", "bccd", "nih_like")]
    scaled = [r for r in held if "_x" in r["set"]]
    return {"floor": floor, "held_out": per_set, "held_out_all": {
        "blurred_sigma_ge_2_refused": refused([r for r in native if r["sigma"] >= 2]),
        "sharp_refused": refused([r for r in native if r["sigma"] == 0]),
        "plain_bccd_sharp_refused": refused([r for r in held if r["set"] == "bccd_plain"]),
        "rescaled_sharp_refused": refused([r for r in scaled if r["sigma"] == 0]),
        "rescaled_up_sharp_refused": refused([r for r in scaled if "_x1" in r["set"] and r["sigma"] == 0]),
        "rescaled_blurred_sigma_ge_2_refused": refused([r for r in scaled if r["sigma"] >= 2]),
    }}


def session_refusals(held: list[dict], measure: str) -> dict:
    """A folder of fields is one session (``screen --fields``, the camera, the phone): each held-out
    copy judged by :func:`focus_reason` against the sharpest of the SESSION_RECENT sharp fields
    before it in frame order, per set and blur: refused rates (the first field has no reference)."""
    from edgekit.device.field.focus import SESSION_RECENT, focus_reason

    out: dict[str, dict] = {}
    for name in sorted({r["set"] for r in held}):
        sel = [r for r in held if r["set"] == name]
        order = list(dict.fromkeys(r["field"] for r in sel))
        sharp = {r["field"]: r["scores"][measure] for r in sel if r["sigma"] == 0}
        out[name] = {}
        for s in SIGMAS:
            refused = []
            for r in (r for r in sel if r["sigma"] == s):
                i = order.index(r["field"])
                before = [sharp[f] for f in order[max(0, i - SESSION_RECENT):i]]
                refused.append(focus_reason(r["scores"][measure], max(before, default=None)) is not None)
            if refused:
                out[name][f"sigma{s:g}"] = round(float(np.mean(refused)), 4)
    return out


def run(step: int = 1, rows: list[dict] | None = None, offset: int = 0) -> dict:
    from edgekit.device.field.focus import FOCUS_FLOOR, FOCUS_MEASURE, SESSION_RATIO, SESSION_RECENT
    from edgekit.device.field.identity import match, same_field, signature

    t0 = time.time()
    sets = field_sets(step, offset)
    rows = rows if rows is not None else score_rows(step, offset)
    current = FOCUS_MEASURE.name
    profile, profile_table = calibrate_profile(rows)
    measures = {f"pixel (old default, floor {OLD_FLOOR})": summarise(rows, "pixel", OLD_FLOOR)
                } if "pixel" in rows[0]["scores"] else {}
    previous = f"pixel+noise (previous default, floor {PREVIOUS_FLOOR})"
    measures[previous] = summarise(rows, "pixel+noise", PREVIOUS_FLOOR)
    for m in rows[0]["scores"]:
        measures[f"{m} (floor recalibrated)"] = summarise(rows, m, calibrate(rows, m))
    measures[f"{current} (default, floor {FOCUS_FLOOR})"] = summarise(rows, current, FOCUS_FLOOR)
    held = [r for r in rows if r["held_out"] and r["set"] in sets]
    # the session rule on the held-out sharp fields, in frame order, per set (the current measure)
    session_false = session_n = 0
    for name in sets:
        seq = [r["scores"][current] for r in held if r["set"] == name and r["sigma"] == 0]
        for i, v in enumerate(seq):
            best = max(seq[max(0, i - SESSION_RECENT):i], default=0.0)
            session_n += 1
            session_false += bool(best) and v < SESSION_RATIO * best
    in_session = session_refusals(held, current)
    ident: dict[str, dict] = {}
    for name, items in sets.items():
        test = [(fid, rgb) for fid, rgb, h in items if h]
        sigs = [signature(rgb) for _, rgb in test]
        pairs_same = list(enumerate(zip(test, sigs, strict=True)))
        same = [match(s, signature(retake(rgb, k))) for k, ((_, rgb), s) in pairs_same]
        detected = [same_field(s, signature(retake(rgb, k)))
                    for k, ((_, rgb), s) in enumerate(zip(test, sigs, strict=True))]
        pairs = [(i, j) for i in range(len(sigs)) for j in (i + 1, i + 3) if j < len(sigs)]
        diff = [match(sigs[i], sigs[j]) for i, j in pairs]
        false = [same_field(sigs[i], sigs[j]) for i, j in pairs]
        ident[name] = {"retakes": len(same), "retakes_detected": round(float(np.mean(detected)), 4),
                       "retake_peak_min": round(min(r for r, _ in same), 3),
                       "different_pairs": len(diff), "different_called_same": round(float(np.mean(false)), 4),
                       "different_peak_max": round(max(r for r, _ in diff), 3)}
    return {
        "measure": f"focus_score (edgekit.device.field.focus), default {current}", "floor": FOCUS_FLOOR,
        "calibration_fields": len({(r["set"], r["field"]) for r in rows if not r["held_out"]}),
        "held_out_fields": len({(r["set"], r["field"]) for r in held}),
        "ms_per_1280x960_field": (ms := times_per_field(candidates())),
        "time_vs_previous_default": round(ms[current] / ms["pixel+noise"], 2),
        "measures": measures,
        "profile": FOCUS_MEASURE.profile, "profile_from_calibration": profile, "profile_table": profile_table,
        "session_ratio": SESSION_RATIO,
        "session_ratio_from_calibration": calibrate_session_ratio(rows, current),
        "sharp_refused_by_session_rule": round(session_false / max(1, session_n), 4),
        "in_a_session": in_session,
        "identity": ident, "step": step, "offset": offset, "seconds": round(time.time() - t0, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--step", type=int, default=1, help="use every Nth field (quicker)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--offset", type=int, default=0,
                    help="start at this field (1 with --step 2: the fields step 2 leaves out; written "
                         "to focus_floor_offset1.json)")
    ap.add_argument("--rows", type=Path, help="scored copies (JSON): read if there, else written")
    args = ap.parse_args(argv)
    rows = json.loads(args.rows.read_text()) if args.rows and args.rows.exists() else None
    if args.rows and rows is None:
        rows = score_rows(args.step, args.offset)
        args.rows.write_text(json.dumps(rows))
    result = run(args.step, rows, args.offset)
    print(json.dumps(result, indent=1))
    if not args.no_write:
        name = f"focus_floor_offset{args.offset}.json" if args.offset else "focus_floor.json"
        (HERE / "results" / name).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
