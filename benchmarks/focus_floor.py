"""Set and measure the focus floor and field identity (issue 22).

    python -m edgekit.benchmarks.focus_floor [--step N] [--no-write]

Fields: real in-focus IML (1280x960, P. vivax) and BCCD (640x480) fields, and NIH-like fields
(NIH cell crops pasted on a stained-background canvas, 1200x900: NIH has no whole fields here).
Each is split by blocks of 10 consecutive frames (IML: within its two stain groups): even blocks
set the floor, odd blocks are held out. Every field is measured sharp and Gaussian-blurred
(sigma 1, 1.5, 2, 3, 4), each copy JPEG re-encoded (q90 or q70) or with sensor noise (std 4).
Floor = midway between the calibration blocks' sharpest sigma>=2 copy and dullest sharp copy.
Held out: refused rate of sigma>=2 copies (want 100%), of sharp ones (want <= 1%), and the
session rule (SESSION_RATIO x the sharpest of the last SESSION_RECENT fields) on the sharp fields
in order. Field identity: a retake (JPEG q70, 5% shift, 0.9x or 1/0.9x scale, blur sigma 1) of each
held-out field against its original, and every held-out field against its neighbours.
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


def field_sets(step: int) -> dict[str, list[tuple[str, np.ndarray, bool]]]:
    """name -> [(id, field, held_out)], blocks of BLOCK consecutive fields alternating."""
    iml = sorted((shared_data("malaria_fields_iml") / "images").glob("*.JPG"))
    groups = [[p for p in iml if p.stem <= "PA171809"], [p for p in iml if p.stem > "PA171809"]]
    bccd = sorted((shared_data("blood_smear_fields_bccd") / "JPEGImages").glob("*.jpg"))
    cells = shared_data("malaria_cells")
    crops = sorted((cells / "Uninfected").glob("*"))[::50] + sorted((cells / "Parasitized").glob("*"))[::50]
    out: dict[str, list] = {"iml": [], "bccd": [], "nih_like": []}
    for g in groups:
        out["iml"] += [(p.name, p, (i // BLOCK) % 2 == 1) for i, p in enumerate(g)][::step]
    out["bccd"] = [(p.name, p, (i // BLOCK) % 2 == 1) for i, p in enumerate(bccd)][::step * 2]
    out["nih_like"] = [(f"seed{i}", i, (i // 5) % 2 == 1) for i in range(0, 40, step)]
    loaded = {}
    for name, items in out.items():
        loaded[name] = [(i, nih_like(crops, src) if name == "nih_like" else _load(src), held)
                        for i, src, held in items]
    return loaded


def run(step: int = 1) -> dict:
    from edgekit.device.field.focus import FOCUS_FLOOR, SESSION_RATIO, SESSION_RECENT, focus_score
    from edgekit.device.field.identity import match, same_field, signature

    t0 = time.time()
    rng = np.random.default_rng(0)
    sets = field_sets(step)
    rows = []
    for name, items in sets.items():
        for k, (fid, rgb, held) in enumerate(items):
            for sigma in SIGMAS:
                mode = (k + int(sigma * 2)) % 3
                rows.append({"set": name, "field": fid, "held_out": held, "sigma": sigma, "mode": mode,
                             "score": focus_score(degrade(rgb, sigma, mode, rng))})
    calib = [r for r in rows if not r["held_out"]]
    max_blur = max(r["score"] for r in calib if r["sigma"] >= 2)
    min_sharp = min(r["score"] for r in calib if r["sigma"] == 0)
    suggested = round((max_blur + min_sharp) / 2, 3)

    def rates(sel: list[dict]) -> dict:
        out = {}
        for s in SIGMAS:
            sc = [r["score"] for r in sel if r["sigma"] == s]
            out[str(s)] = {"n": len(sc), "refused": round(float(np.mean([v < FOCUS_FLOOR for v in sc])), 4),
                           "min": round(min(sc), 4), "median": round(float(np.median(sc)), 4),
                           "max": round(max(sc), 4)}
        return out

    held = [r for r in rows if r["held_out"]]
    # the session rule on the held-out sharp fields, in frame order, per set
    session_false = session_n = 0
    for name in sets:
        seq = [r["score"] for r in held if r["set"] == name and r["sigma"] == 0]
        for i, v in enumerate(seq):
            best = max(seq[max(0, i - SESSION_RECENT):i], default=0.0)
            session_n += 1
            session_false += bool(best) and v < SESSION_RATIO * best
    # blurred copies (sigma 1.5) of held-out fields after a sharp one: refused by the session rule
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
        "measure": "focus_score (edgekit.device.field.focus)", "floor": FOCUS_FLOOR,
        "suggested_floor_from_calibration": suggested,
        "calibration": {"fields": len({(r['set'], r['field']) for r in calib}),
                        "max_score_sigma_ge_2": round(max_blur, 4), "min_score_sharp": round(min_sharp, 4)},
        "held_out": {name: rates([r for r in held if r["set"] == name]) for name in sets},
        "held_out_all": {
            "fields": len({(r['set'], r['field']) for r in held}),
            "blurred_sigma_ge_2_refused": round(float(np.mean([r["score"] < FOCUS_FLOOR for r in held
                                                                  if r["sigma"] >= 2])), 4),
            "sharp_refused": round(float(np.mean([r["score"] < FOCUS_FLOOR for r in held
                                                  if r["sigma"] == 0])), 4),
            "sharp_refused_by_session_rule": round(session_false / max(1, session_n), 4),
        },
        "identity": ident, "step": step, "seconds": round(time.time() - t0, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--step", type=int, default=1, help="use every Nth field (quicker)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    result = run(args.step)
    print(json.dumps(result, indent=1))
    if not args.no_write:
        (HERE / "results" / "focus_floor.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
