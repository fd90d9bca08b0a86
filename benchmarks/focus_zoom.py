"""Enlarged sharp fields under a site's focus rule (issues 22, 29): judged at the site's own scale.

    python -m edgekit.benchmarks.focus_zoom [--no-write] [--rows CACHE.json]

A site bundle records its fields' median cell radius (``focus.radius``); a field under the site's
floor whose cells are over SITE_ZOOM x that radius is scored again shrunk to it
(:meth:`edgekit.device.field.focus.FocusRule.score`). The reference is the site's own microscope, so
a field with large cells from another one (NIH-like next to BCCD) does not set it.

Fields: IML (every 4th; blurred copies keep the burned-in bar sharp), BCCD (every 4th), NIH-like
(40), each kind its own site, split by blocks as ``focus_floor`` splits them: the site's floor and
radius from its calibration half as they are (:func:`edgekit.site_focus.field_scores`,
:func:`~edgekit.device.field.focus.site_rule`), the copies of its held-out half judged: sharp at 1x,
1.25x, 1.5x (linear) and 0.7x (area), blurred at native scale with sigma 2 (JPEG q90) and 3 (q70).
SITE_ZOOM is chosen on the calibration halves: the lowest at which no blurred copy passes (sigma >= 2
refused 100% is the target that may not get worse; the fewest errors in all, rates summed over the
kinds, is reported too: it lets a calibration blurred copy pass). Writes
``benchmarks/results/focus_zoom.json``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgekit.benchmarks.field_transforms import rescale
from edgekit.benchmarks.focus_floor import blur, iml_overlay_pixels, jpeg, reburn
from edgekit.benchmarks.focus_scale import fields
from edgekit.benchmarks.focus_site_guard import cached_main

SHARP = ("x1", "x1.25", "x1.5", "x0.7")
BLURRED = ("s2", "s3")
ZOOMS = tuple(round(1.1 + 0.05 * k, 2) for k in range(7))  # the SITE_ZOOM tried
SHRUNK_FROM = 1.05  # copies whose cells are over this x the site's radius are also scored shrunk to it


def copies(rgb: np.ndarray, kind: str) -> dict[str, Callable[[], np.ndarray]]:
    """Name -> how to make each copy of ``rgb`` (IML's bar kept sharp on the blurred ones)."""
    mark = iml_overlay_pixels(rgb) if kind == "iml" else None

    def blurred(sigma: float, quality: int) -> np.ndarray:
        out = blur(rgb, sigma)
        return jpeg(out if mark is None else reburn(rgb, out, mark), quality)

    return {"x1": lambda: rgb, "x1.25": lambda: rescale(rgb, 1.25), "x1.5": lambda: rescale(rgb, 1.5),
            "x0.7": lambda: rescale(rgb, 0.7), "s2": lambda: blurred(2.0, 90), "s3": lambda: blurred(3.0, 70)}


def score_rows() -> list[dict]:
    """Per field: held out or not, and per copy its site-measure score, cells' radius and (when its
    cells are over SHRUNK_FROM x its site's radius) its score shrunk to that radius."""
    from edgekit.device.field.focus import SITE_MARKS, FocusRule
    from edgekit.device.field.segment import cell_radius
    from edgekit.device.field.view import inside_crop
    from edgekit.device.preprocess import opencv

    cv2 = opencv()
    rule = FocusRule(marks=SITE_MARKS)
    radii: dict[str, list[float]] = {}
    for kind, _, rgb, held in fields():
        if not held:
            radii.setdefault(kind, []).append(cell_radius(np.ascontiguousarray(inside_crop(rgb))))
    site = {k: float(np.median([r for r in v if r > 0])) for k, v in radii.items()}
    rows = []
    for kind, fid, rgb, held in fields():
        row: dict = {"kind": kind, "field": fid, "held_out": held, "site_radius": site[kind]}
        for name, make in copies(rgb, kind).items():
            crop = np.ascontiguousarray(inside_crop(make()))
            r = cell_radius(crop)
            f = site[kind] / r if r > 0 else 1.0
            shrunk = (rule.score(cv2.resize(crop, None, fx=f, fy=f, interpolation=cv2.INTER_AREA))
                      if f * SHRUNK_FROM < 1 else None)
            row[name] = {"score": rule.score(crop), "radius": r, "shrunk": shrunk}
        rows.append(row)
    return rows


def judged(c: dict, floor: float, site_radius: float, zoom: float | None) -> float:
    """A copy's score as the site rule takes it (:meth:`~edgekit.device.field.focus.FocusRule.score`,
    with SITE_ZOOM = ``zoom``; None: without the site's radius)."""
    from edgekit.device.field.focus import SITE_ZOOM_MAX

    zoomed = zoom is not None and zoom * site_radius < c["radius"] <= SITE_ZOOM_MAX * site_radius
    if not zoomed or c["score"] >= floor or c["shrunk"] is None:
        return c["score"]
    return max(c["score"], c["shrunk"])


def refused(sel: list[dict], floor: float, zoom: float | None) -> dict:
    """Per copy: the share of ``sel`` refused."""
    return {name: round(float(np.mean([judged(r[name], floor, r["site_radius"], zoom) < floor
                                       for r in sel])), 3) for name in SHARP + BLURRED}


def summary(rows: list[dict]) -> dict:
    """Each kind's site floor (its calibration half); SITE_ZOOM from the calibration halves; the
    held-out refusals without the site's radius and with it."""
    from edgekit.device.field.focus import SITE_ZOOM, site_rule

    kinds = sorted({r["kind"] for r in rows})
    floors = {k: site_rule([r["x1"]["score"] for r in rows if r["kind"] == k and not r["held_out"]]).floor
              for k in kinds}

    def cost(zoom: float) -> float:
        total = 0.0
        for k in kinds:
            rate = refused([r for r in rows if r["kind"] == k and not r["held_out"]], floors[k], zoom)
            total += np.mean([rate[n] for n in SHARP]) + np.mean([1 - rate[n] for n in BLURRED])
        return round(float(total), 4)

    def blurred_passed(zoom: float) -> int:
        cal = [r for r in rows if not r["held_out"]]
        return sum(judged(r[n], floors[r["kind"]], r["site_radius"], zoom) >= floors[r["kind"]]
                   for r in cal for n in BLURRED)

    table = {str(z): {"errors": cost(z), "blurred_passed": blurred_passed(z)} for z in ZOOMS}
    best = min(t["errors"] for t in table.values())
    tied = [z for z in ZOOMS if table[str(z)]["errors"] == best]
    safe = min(z for z in ZOOMS if not table[str(z)]["blurred_passed"])
    held = {}
    for k in kinds:
        sel = [r for r in rows if r["kind"] == k and r["held_out"]]
        held[k] = {"fields": len(sel), "floor": floors[k], "site_radius": sel[0]["site_radius"],
                   "before": refused(sel, floors[k], None), "after": refused(sel, floors[k], SITE_ZOOM)}
    return {"zoom_used": SITE_ZOOM, "zoom_from_calibration": safe,
            "zoom_with_fewest_errors": tied[len(tied) // 2], "zoom_table": table,
            "held_out_refused": held}


def main(argv: list[str] | None = None) -> None:
    cached_main(argv, __doc__.split("\n")[0], score_rows, summary, "focus_zoom.json")


if __name__ == "__main__":
    main()
