"""Focus judged at a reference cell radius, on the calibration sets (issues 22, 29).

    python -m edgekit.benchmarks.focus_reference [--no-write]

The fields the focus floor and the site share were set on (``focus_scale.fields``: IML every 4th, its
bar kept sharp on blurred copies; BCCD every 4th; 40 NIH-like), split by blocks. Each held-out field is
judged sharp (1x; enlarged 1.5x; BCCD also 2.5x), blurred with sigma 1-4 at its own scale (JPEG q90),
and enlarged after a sigma-2 blur (as blurred for its cells as sigma 2 at 1x), under:

- ``default``: the default bundle's rule (FOCUS_FLOOR, marks read) as it is;
- ``default_reference``: the same floor with each field shrunk so its cells measure
  REFERENCE_RADIUS (per field, from its own radius; what the default would do with the reference);
- ``default_zoom<R>``: the default with a cell radius of its own, R px (DEFAULT_RADII): a field under
  its floor whose cells read SITE_ZOOM to SITE_ZOOM_MAX x R is scored again shrunk to R;
- ``site`` / ``site_reference``: each kind its own site, the rule set on its calibration half's sharp
  fields as ``edgekit site adapt`` sets it (:func:`edgekit.site_focus.images_focus`), without and with
  the reference scale (a site whose median cell radius is over SITE_ZOOM x REFERENCE_RADIUS).

Writes ``benchmarks/results/focus_reference.json`` (``--calibration``: ``focus_reference_calibration.json``):
fields refused per copy, held out (or on the calibration half, where the default's radius is chosen).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.benchmarks.field_transforms import HERE, rescale, write_results
from edgekit.benchmarks.focus_floor import blur, iml_overlay_pixels, jpeg, reburn
from edgekit.benchmarks.focus_scale import fields

SIGMAS = (1.0, 2.0, 3.0, 4.0)
# cell radii (px) tried as the default rule's own: a field under its floor whose cells read over SITE_ZOOM x
# that is scored again shrunk to it (FocusRule.zoomed_score, as a site's radius)
DEFAULT_RADII = (40.0, 45.0, 52.0, 60.0)


def copies(rgb: np.ndarray, kind: str) -> dict[str, Callable[[], np.ndarray]]:
    """Name -> how to make each copy of ``rgb`` (IML's bar kept sharp on the blurred ones)."""
    mark = iml_overlay_pixels(rgb) if kind == "iml" else None

    def blurred(sigma: float) -> np.ndarray:
        out = blur(rgb, sigma)
        return jpeg(out if mark is None else reburn(rgb, out, mark), 90)

    out: dict[str, Callable[[], np.ndarray]] = {"x1": lambda: rgb}
    for k in (1.5, 2.5) if kind == "bccd" else (1.5,):
        out[f"x{k:g}"] = lambda k=k: rescale(rgb, k)
        out[f"x{k:g} s2"] = lambda k=k: rescale(blurred(2.0), k)  # as blurred for its cells as sigma 2 at 1x
    return out | {f"s{s:g}": (lambda s=s: blurred(s)) for s in SIGMAS}


def rules(calibration: dict[str, list[np.ndarray]]) -> dict[str, dict[str, Any]]:
    """kind -> rule name -> FocusRule."""
    from edgekit.device.field.focus import DEFAULT_RULE, REFERENCE_RADIUS, FocusRule
    from edgekit.site_focus import images_focus

    out: dict[str, dict[str, Any]] = {}
    for kind, sharp in calibration.items():
        site = {name: FocusRule.from_dict(images_focus(sharp, lambda x: x, print, reference=ref))
                for name, ref in (("site", 0.0), ("site_reference", None))}
        default = {"default": FocusRule(floor=DEFAULT_RULE.floor, marks=DEFAULT_RULE.marks),
                   "default_reference": FocusRule(reference=REFERENCE_RADIUS)}
        default |= {f"default_zoom{r:g}": FocusRule(radius=r) for r in DEFAULT_RADII}
        out[kind] = {**default, **site}
    return out


def judged(rgb: np.ndarray, kind_rules: dict[str, Any]) -> tuple[float, dict[str, bool]]:
    """(the cells' radius, rule name -> whether it refuses ``rgb`` as out of focus, as the gate scores
    it; the radius measured once)."""
    from edgekit.device.field.quality import field_focus
    from edgekit.device.field.segment import cell_radius
    from edgekit.device.field.view import inside_crop

    crop = np.ascontiguousarray(inside_crop(rgb))
    radius = cell_radius(crop)
    out = {}
    for name, rule in kind_rules.items():
        score = rule.score(crop, radius=radius) if rule.reference or rule.radius else field_focus(rgb, rule)
        out[name] = score is not None and rule.reason(score) is not None
    return radius, out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--calibration", action="store_true",
                    help="judge the calibration half (the rules are set on it) instead of the held-out one")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    half = "_calibration" if args.calibration else ""
    args.out = args.out or HERE / "results" / f"focus_reference{half}.json"
    rows = list(fields())
    calibration: dict[str, list[np.ndarray]] = {}
    for kind, _, rgb, held in rows:
        if not held:
            calibration.setdefault(kind, []).append(rgb)
    by_kind = rules(calibration)
    counts: dict[str, dict[str, dict[str, int]]] = {}
    judgements = []
    for kind, name, rgb, held in rows:
        if held == args.calibration:
            continue
        for copy, make in copies(rgb, kind).items():
            c = counts.setdefault(kind, {}).setdefault(copy, {"fields": 0})
            c["fields"] += 1
            radius, refused = judged(make(), by_kind[kind])
            judgements.append({"kind": kind, "copy": copy, "radius": round(radius, 1), "refused": refused})
            for rule, r in refused.items():
                c[rule] = c.get(rule, 0) + int(r)
        print(kind, name, flush=True)
    radii = {k: {c: [r["radius"] for r in judgements if r["kind"] == k and r["copy"] == c] for c in v}
             for k, v in counts.items()}
    doc = {"date": time.strftime("%Y-%m-%d"), "held_out_refused": counts,
           "radius_range": {k: {c: [min(v), max(v)] for c, v in per.items()} for k, per in radii.items()},
           "half": "calibration" if args.calibration else "held out",
           "rules": {k: {n: {"floor": r.floor, "reference": r.reference, "radius": r.radius,
                             "source": r.source} for n, r in v.items()} for k, v in by_kind.items()}}
    print(counts)
    return write_results(doc, args)


if __name__ == "__main__":
    main()
