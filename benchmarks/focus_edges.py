"""A candidate focus measure at the cells' scale: the width of the cells' edges per cell radius (issue 22).

    python -m edgekit.benchmarks.focus_edges [--rows CACHE.json] [--pairs N] [--no-write] [--cpu]

Today's measure (:mod:`edgekit.device.field.focus`) reads edge sharpness in pixels, so a field with
more pixels per cell (a 1.5x objective, a phone zoom) looks blurred, and soft optics in focus (IML
without its bar) score under crisp optics blurred with sigma 2. The candidate (:func:`edge_widths`)
reads each strong edge's width as its intensity step over its steepest slope (the step's 10-90% rise
is about that: 2.5 sigma for a Gaussian edge), the edges chosen on a smoothed slope so that noise does
not choose them; it takes a low percentile over the field (the crispest cell outlines say what the
optics resolve; burned-in marks' boxes are left out, as they would carry a low percentile; which of
EDGE_PERCENTILES is chosen on the calibration sessions) and the score is the cells' radius
(:func:`edgekit.device.field.segment.cell_radius`) over that width. A sigma-2 blur widens an edge by
about 2 px; an enlargement widens edges and cells alike.

The copies are :mod:`edgekit.benchmarks.focus_sessions`' (the same fields, sessions, blur, JPEG and
noise: :func:`~edgekit.benchmarks.focus_sessions.copies`), plus each field of the sets without a mark
enlarged 1.25x and 1.5x after its blur (the same optics seen with more pixels per cell: its blur
grows with it) and then re-encoded or noisy like the others. Each copy is scored by today's measure
(``shared``, marks read) and by the candidate; the rules are replayed in sessions in every order
(:func:`~edgekit.benchmarks.focus_sessions.replay`), their parameters chosen on the even sessions and
reported on the odd ones: the candidate alone (a floor on 1 / width-per-radius, with and without a
session-relative ratio), and today's rule with the candidate as a second opinion (refused when
either refuses: its floor and ratio chosen as the others, and the highest floor that refuses no more
calibration sharp copies of any kind than today). ``--cpu``: both measures' CPU per field side by
side on the same fields. ``--pairs N``: every Nth pair of sessions only (the results: 2, for CPU).
Writes ``benchmarks/results/focus_edges.json``.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from collections.abc import Callable
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from edgekit.benchmarks import focus_floor as ff
from edgekit.benchmarks import focus_sessions as fs

HERE = Path(__file__).resolve().parent
EDGE_SHARE = 4.0  # % of pixels whose gradient is over this share's level are edge candidates
EDGE_PERCENTILES = (10, 25, 50)  # the percentiles of the edges' widths tried as the field's
PRE_SIGMA = 0.7  # px: the slope is read after this Gaussian (sensor noise)
STEP_SIGMA = 2.0  # px: the step is read after this one (noise would add to a max - min)
STEP_REACH = 0.5  # the step is the max - min within this x the cell radius of the edge (4-32 px)
FACTORS = (1.25, 1.5)  # enlarged copies
PLAIN = ("iml_no_bar", "bccd", "nih_like")  # the kinds also enlarged


def edge_widths(rgb: np.ndarray, radius: float, marks: list | None = None) -> list[float]:
    """The EDGE_PERCENTILES of the strong edges' widths (px: step / steepest slope) of ``rgb``'s green
    plane, the boxes of ``marks`` (grown as the focus measure grows them) left out; inf when the
    field has no edges. The edges are chosen on the slope after STEP_SIGMA (noise does not choose
    them: on a blurred noisy field the steepest fine slopes are noise), their slope read after
    PRE_SIGMA."""
    import cv2

    from edgekit.device.field.focus import MARK_GROW
    from edgekit.device.field.marks import marks_mask

    g = np.ascontiguousarray(rgb[:, :, 1] if rgb.ndim == 3 else rgb).astype(np.float32)
    fine, smooth = cv2.GaussianBlur(g, (0, 0), PRE_SIGMA), cv2.GaussianBlur(g, (0, 0), STEP_SIGMA)
    reach = int(np.clip(round(STEP_REACH * radius), 4, 32))
    box = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * reach + 1, 2 * reach + 1))
    step = cv2.dilate(smooth, box) - cv2.erode(smooth, box)
    coarse = _slope(smooth)
    peak = (coarse >= cv2.dilate(coarse, np.ones((3, 3), np.uint8))) & (
        coarse > np.percentile(coarse[::2, ::2], 100 - EDGE_SHARE))
    if marks:
        peak &= ~marks_mask(marks, peak.shape, 1.0, MARK_GROW)
    if not peak.any():
        return [float("inf")] * len(EDGE_PERCENTILES)
    widths = step[peak] / np.maximum(_slope(fine)[peak], 1e-3)
    return [float(w) for w in np.percentile(widths, EDGE_PERCENTILES)]


def _slope(plane: np.ndarray) -> np.ndarray:
    """The gradient magnitude of ``plane`` in grey levels per px."""
    import cv2

    gx, gy = cv2.Sobel(plane, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(plane, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.magnitude(gx, gy) / 8


def edge_sharpness(rgb: np.ndarray, marks: list | None = None, radius: float | None = None) -> dict:
    """The candidate's reading of a field: its cells' radius, edge widths (px, EDGE_PERCENTILES) and
    the scores radius / width per percentile (higher is sharper; 0 when no cells were found)."""
    from edgekit.device.field.segment import cell_radius

    r = cell_radius(rgb) if radius is None else radius
    widths = edge_widths(rgb, r or 30.0, marks)
    scores = {f"edges_p{p}": round(r / w, 4) if r > 0 and w > 0 else 0.0
              for p, w in zip(EDGE_PERCENTILES, widths, strict=True)}
    return {"radius": round(r, 2), "widths": [round(w, 3) for w in widths], **scores}


def _enlarged(item: tuple, rgb: np.ndarray) -> list[tuple[str, float, np.ndarray]]:
    """(kind, sigma, copy) of a field of PLAIN enlarged by each of FACTORS after its blur, then
    re-encoded or noisy as :func:`focus_sessions.copies` degrades the same sigma."""
    from edgekit.benchmarks.field_transforms import rescale

    name, session, pos, _, _ = item
    kind = "iml_no_bar" if name == "iml" else name
    field = rgb[:ff.IML_OVERLAY[0]] if name == "iml" else rgb
    rng = np.random.default_rng(zlib.crc32(f"{name}/{session}/{pos}/enlarged".encode()))
    out = []
    for factor in FACTORS:
        for sigma in fs.SIGMAS:
            big = rescale(ff.blur(field, sigma), factor)
            out.append((f"{kind}_x{factor:g}", sigma, fs.degrade(big, pos, sigma, rng)))
    return out


def _score_field(item: tuple) -> list[dict]:
    """Every copy of one field (its focus_sessions copies and its enlarged ones): today's score and
    the candidate's."""
    import cv2

    from edgekit.device.field.focus import DEFAULT_RULE
    from edgekit.device.field.marks import burned_marks
    from edgekit.device.field.view import inside_crop

    cv2.setNumThreads(1)
    name, session, pos, fid, _ = item
    rgb = fs.field_of(item)
    copies = list(fs.copies(item, rgb))
    if name in PLAIN or name == "iml":
        copies += _enlarged(item, rgb)
    rows = []
    for kind, sigma, copy in copies:
        crop = np.ascontiguousarray(inside_crop(copy))
        marks = burned_marks(crop)
        rows.append({"kind": kind, "session": session, "pos": pos, "field": fid, "sigma": sigma,
                     "marks": len(marks), "shared": round(DEFAULT_RULE.score(crop), 5),
                     **edge_sharpness(crop, marks)})
    return rows


def score_rows(pairs: int = 1, workers: int = 2) -> list[dict]:
    """Every copy of the fields of every ``pairs``-th pair of sessions (a calibration session and
    the held-out one after it), on ``workers`` processes."""
    items = [i for i in fs.field_items() if i[1] // 2 % pairs == 0]
    with get_context("spawn").Pool(workers) as pool:
        return [r for rows in pool.imap(_score_field, items, chunksize=2) for r in rows]


def load_rows(cache: Path | None, pairs: int = 1) -> list[dict]:
    """The scored copies, read from ``cache`` when there (else scored, and written to it)."""
    if cache and cache.exists():
        return json.loads(cache.read_text())
    rows = score_rows(pairs)
    if cache:
        cache.write_text(json.dumps(rows))
    return rows


EDGE_FLOORS = [round(3.0 + 0.25 * k, 2) for k in range(45)]  # radius / width: 3-14
EDGE_GRID = [(f, r) for f in EDGE_FLOORS for r in (0.0, 0.7, 0.75, 0.8, 0.85, 0.9)]
EDGE_STATS = tuple(f"edges_p{p}" for p in EDGE_PERCENTILES)


def either(floor: float, ratio: float) -> fs.Verdict:
    """Today's judgement (on ``shared``) or the candidate's (``floor`` and ``ratio``): refused when
    either refuses, each against its own scores of the session's counted fields."""
    today, edges = fs.shipped(), fs.relative(floor, ratio)

    def refuse(s: tuple[float, float], _: float, counted: list) -> bool:
        return today(s[0], 0.0, [c[0] for c in counted]) or edges(s[1], 0.0, [c[1] for c in counted])

    return refuse  # type: ignore[return-value]


def summary(rows: list[dict]) -> dict:
    """Each rule's refusals per kind (enlarged kinds included), half and order. The percentile, the
    floor and the session ratio are chosen on the calibration sessions of the unenlarged kinds (an
    enlarged copy never sets a threshold)."""
    cal = [r for r in rows if "_x" not in r["kind"]]
    by_stat = {st: fs.chosen(cal, fs.relative, EDGE_GRID, st) for st in EDGE_STATS}
    stat = min(by_stat, key=lambda st: by_stat[st][1])
    (f2, r2), cost2, near2 = by_stat[stat]
    (f1,), cost1, _ = fs.chosen(cal, lambda f: fs.relative(f, 0.0), [(f,) for f in EDGE_FLOORS], stat)
    for r in rows:
        r["both"] = (r["shared"], r[stat])
    (f3, r3), cost3, _ = fs.chosen(cal, either, EDGE_GRID, "both")
    f4 = no_more_sharp_refused(cal, stat)
    name = f"edge width per radius ({stat})"
    rules: list[fs.Rule] = [
        ("today (marks read, FOCUS_FLOOR, session rule)", "shared", fs.shipped()),
        (f"{name}: floor {f1:g}", stat, fs.relative(f1, 0.0)),
        (f"{name}: floor {f2:g}, {r2:g} x sharpest recent", stat, fs.relative(f2, r2)),
        (f"today, or {name} (floor {f3:g}, {r3:g} x sharpest recent)", "both", either(f3, r3)),
        (f"today, or {name} (floor {f4:g}: the highest that refuses no more calibration sharp copies "
         "of any kind than today)", "both", either(f4, 0.0))]
    return {"rules": {rule[0]: fs.report(rows, rule) for rule in rules},
            "calibration_cost": {"by_stat": {st: c[1] for st, c in by_stat.items()}, "stat": stat,
                                 "floor": cost1, "relative": cost2, "either": cost3},
            "near_ties_relative": {"points": near2,
                                   "held_out_spread": fs.spread(rows, fs.relative, near2, stat)},
            "site_floors_alone": site_floors(rows, stat),
            "overlap": overlap(rows, stat),
            "fields": {k: len({(r["session"], r["pos"]) for r in rows if r["kind"] == k})
                       for k in sorted({r["kind"] for r in rows})},
            "factors": FACTORS, "copies": len(rows), "no_radius": sum(r["radius"] <= 0 for r in rows)}


def no_more_sharp_refused(cal: list[dict], stat: str) -> float:
    """The highest of EDGE_FLOORS at which today's rule with the candidate as a second opinion
    (:func:`either`, no session ratio) refuses no more sharp copies of any kind of ``cal``'s
    calibration sessions than today's rule alone (the lowest floor when none is that safe)."""
    today = fs.rates(fs.replay(cal, ("", "shared", fs.shipped())), "cal")
    safe = [f for f in EDGE_FLOORS
            if all(v["sharp"] <= today[k]["sharp"]
                   for k, v in fs.rates(fs.replay(cal, ("", "both", either(f, 0.0))), "cal").items())]
    return max(safe, default=EDGE_FLOORS[0])


SITE_SHARES = tuple(round(0.5 + 0.02 * k, 2) for k in range(24))  # a site's floor: share x its median


def site_floors(rows: list[dict], stat: str) -> dict:
    """Each unenlarged kind as its own site: its floor SHARE x the median ``stat`` of its sharp
    calibration copies (as ``edgekit site adapt`` sets a site's floor on its own fields), the share
    chosen on the calibration copies; each copy judged alone, its enlarged copies by the floor of the
    kind they were enlarged from. Refused per kind, held out."""
    def site(kind: str) -> str:
        return kind.split("_x")[0]

    medians = {k: float(np.median([r[stat] for r in rows if r["kind"] == k and r["sigma"] == 0
                                   and r["session"] % 2 == 0])) for k in {site(r["kind"]) for r in rows}}

    def refused(share: float, half: int, enlarged: bool) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, list[bool]]] = {}
        for r in rows:
            if r["session"] % 2 == half and enlarged == ("_x" in r["kind"]):
                s = r["sigma"]
                label = "sharp" if s == 0 else ("sigma_ge_2" if s >= 2 else f"sigma{s:g}")
                floor = share * medians[site(r["kind"])]
                out.setdefault(r["kind"], {}).setdefault(label, []).append(r[stat] < floor)
        return {k: {lb: round(float(np.mean(v)), 4) for lb, v in sorted(t.items())} for k, t in out.items()}

    share = min(SITE_SHARES, key=lambda sh: fs.cost(refused(sh, 0, False)))
    return {"share": share, "held": {**refused(share, 1, False), **refused(share, 1, True)}}


def overlap(rows: list[dict], stat: str) -> dict:
    """Per kind: ``stat`` of its sharp copies (lowest 5, with their fields) and of its sigma >= 2
    copies (highest 5), and the range of each; where they cross, no floor separates them."""
    out = {}
    for kind in sorted({r["kind"] for r in rows}):
        mine = [r for r in rows if r["kind"] == kind]
        sharp = sorted((r[stat], r["field"]) for r in mine if r["sigma"] == 0)
        blurred = sorted((r[stat], r["field"], r["sigma"]) for r in mine if r["sigma"] >= 2)
        out[kind] = {"sharp": [sharp[0][0], sharp[-1][0]], "sigma_ge_2": [blurred[0][0], blurred[-1][0]],
                     "sharp_lowest": sharp[:5], "sigma_ge_2_highest": blurred[-5:]}
    return out


def _ms(fn: Callable[[int], object], n: int, rounds: int) -> float:
    """The least CPU ms per call of ``fn(k)`` for k < ``n`` over ``rounds`` rounds."""
    best = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        for k in range(n):
            fn(k)
        best = min(best, (time.process_time() - t) / n * 1000)
    return round(best, 1)


def cpu(fields: int = 12, rounds: int = 3) -> dict:
    """CPU ms per field of today's measure and of the candidate's parts (its edge widths, the cells'
    radius, which the cell finder already has on the device path, and the marks), side by side on
    the same IML (1280x960) and BCCD (640x480) fields."""
    from edgekit.device.field.focus import DEFAULT_RULE
    from edgekit.device.field.marks import burned_marks
    from edgekit.device.field.segment import cell_radius
    from edgekit.device.field.view import inside_crop

    out = {}
    for name in ("iml", "bccd"):
        items = [i for i in fs.field_items() if i[0] == name][::10][:fields]
        crops = [np.ascontiguousarray(inside_crop(fs.field_of(i))) for i in items]
        marks = [burned_marks(c) for c in crops]
        radii = [cell_radius(c) for c in crops]
        out[name] = {"today": _ms(lambda k: DEFAULT_RULE.score(crops[k]), len(crops), rounds),  # noqa: B023
                     "edge widths": _ms(lambda k: edge_widths(crops[k], radii[k], marks[k]),  # noqa: B023
                                        len(crops), rounds),
                     "cell radius": _ms(lambda k: cell_radius(crops[k]), len(crops), rounds),  # noqa: B023
                     "marks": _ms(lambda k: burned_marks(crops[k]), len(crops), rounds)}  # noqa: B023
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=Path, help="scored copies (JSON): read if there, else written")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--cpu", action="store_true", help="also CPU per field, both measures side by side")
    ap.add_argument("--pairs", type=int, default=1,
                    help="score every PAIRS-th pair of sessions (default: all)")
    args = ap.parse_args(argv)
    t0 = time.time()
    result = {**summary(load_rows(args.rows, args.pairs)), "session_pairs": args.pairs}
    if args.cpu:
        result["cpu_ms_per_field"] = cpu()
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps({k: v for k, v in result.items() if k != "rules"}, indent=1))
    if not args.no_write:
        (HERE / "results" / "focus_edges.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
