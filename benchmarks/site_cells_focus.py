"""`edgekit site cells` judged by the site's own focus rule: sharp fields of another microscope kept,
blurred ones still left out (issues 29, 22).

    python -m edgekit.benchmarks.site_cells_focus [--every-iml 4] [--every-bccd 8] [--no-iml-all]

**Combinations** (``field_transforms --combos``, the sample it uses): each set's fields made to look
like another microscope (:data:`COMBOS`), a "site folder" of them with a blurred copy of every
BLURRED_EVERY-th field mixed in (Gaussian sigma 2 and 3 in turn, in the new microscope's pixels:
after its geometry, before its camera's noise and JPEG). Every field of the folder through the
device gate and finder (``count_cells``) as ``site cells`` judged it before (the shared rule) and
judges it now (:func:`edgekit.site_focus.measured_focus` of the folder's own fields): sharp fields
refused, blurred copies left out. **Held out**: the rule set on the sample's even fields (and their
mixed-in copies) only, as a site bundle adapted on them would carry it, applied to the odd fields:
sharp ones kept, and copies blurred with sigma 2 and 3 in the site's pixels, and with sigma 2 in the
source's pixels (the same blur for the cells as sigma 2 at IML's or BCCD's scale), refused.

**Candidate, not adopted** (``--reference-radius R``, results ``site_cells_focus_reference.json``):
the site's rule measured at a reference cell radius: when the folder's median cell radius is over
SITE_ZOOM x R, every field of the site is shrunk by the one factor R / that median before it is
scored (the floor set and each field judged at that scale: :func:`at_reference_scale`).

**IML as it is** (``--no-iml-all`` to skip): the 172 IML fields through :func:`edgekit.cells.cut_field`
with the shared rule and with their own (:func:`edgekit.cells.fields_rule`): fields refused and
cells cut, before -> after.

Writes ``benchmarks/results/site_cells_focus.json``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.benchmarks.field_transforms import COMBOS, HERE, load_fields, write_results

# the combinations measured per set: those ``--combos`` found refused as out of focus, and controls
SET_COMBOS = {"iml": ("original", "foreign", "foreign-1.25"),
              "bccd": ("original", "foreign", "foreign-0.8", "foreign-1.25", "foreign-0.6")}
BLURRED_EVERY = 4  # a blurred copy of every 4th field joins the folder: 1 field in 5 is blurred
MIXED_SIGMAS = (2.0, 3.0)  # the mixed-in copies' blur, in turn
HELD_OUT_SIGMAS = (2.0, 3.0)


def _blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    from edgekit.device.preprocess import opencv

    return opencv().GaussianBlur(rgb, (0, 0), sigma)


def looked(name: str, rgb: np.ndarray, sigma: float = 0.0, source_sigma: float = 0.0) -> np.ndarray:
    """The field as microscope ``name`` sees it (``original``: as it is), blurred with ``sigma`` in
    that microscope's pixels (before its camera) or ``source_sigma`` in the field's own."""
    if source_sigma:
        rgb = _blur(rgb, source_sigma)
    if name == "original":
        return _blur(rgb, sigma) if sigma else rgb
    stain, geometry, cam = COMBOS[name]
    x, _ = geometry(stain(rgb), [])
    return np.ascontiguousarray(cam(_blur(x, sigma) if sigma else x))


def _reason(rgb: np.ndarray, rule: Any) -> str | None:
    from edgekit.device.field import count_cells

    return count_cells(rgb, rule=rule)[2]


def _focus_refused(rgb: np.ndarray, rule: Any) -> bool:
    """Whether ``rule`` (None: the shared one) finds the field out of focus, as the gate scores it."""
    from edgekit.device.field.focus import DEFAULT_RULE
    from edgekit.device.field.quality import field_focus

    rule = rule or DEFAULT_RULE
    score = field_focus(rgb, rule)
    return score is not None and rule.reason(score) is not None


def _rule(measured: list, log: Callable[[str], None]) -> Any:
    from edgekit.device.field.focus import FocusRule
    from edgekit.site_focus import measured_focus

    focus = measured_focus(measured, log)
    return None if focus is None else FocusRule.from_dict(focus)


def folder(name: str, images: list[Path]) -> list[dict[str, Any]]:
    """The site folder of microscope ``name``: each field sharp, every BLURRED_EVERY-th also blurred
    (MIXED_SIGMAS in turn); per entry its pixels, blur, position and field_scores."""
    from edgekit.device.field.focus import SITE_MARKS, FocusRule
    from edgekit.device.preprocess import read_image
    from edgekit.site_focus import field_scores

    measure = FocusRule(marks=SITE_MARKS)
    out = []
    for i, image in enumerate(images):
        rgb = read_image(image)
        sigmas = [0.0]
        if i % BLURRED_EVERY == 0:
            sigmas.append(MIXED_SIGMAS[(i // BLURRED_EVERY) % len(MIXED_SIGMAS)])
        for sigma in sigmas:
            x = looked(name, rgb, sigma)
            out.append({"i": i, "sigma": sigma, "rgb": x, "scores": field_scores(x, measure),
                        "source": rgb})
    return out


def _counts(entries: list[dict[str, Any]], key: str) -> dict[str, int]:
    sharp = [e for e in entries if not e["sigma"]]
    blurred = [e for e in entries if e["sigma"]]
    return {"sharp": len(sharp), "sharp_refused": sum(bool(e[key]) for e in sharp),
            "sharp_refused_focus": sum((e[key] or "").startswith("out of focus") for e in sharp),
            "blurred": len(blurred), "blurred_left_out": sum(bool(e[key]) for e in blurred)}


def held_out(name: str, entries: list[dict[str, Any]], factor: float = 1.0) -> dict[str, Any]:
    """The rule set on the even fields' entries, tried on the odd fields and their blurred copies (each
    shrunk by ``factor``, as the entries' pixels were)."""
    notes: list[str] = []
    rule = _rule([e["scores"] for e in entries if e["i"] % 2 == 0], notes.append)
    odd = [e for e in entries if e["i"] % 2 == 1 and not e["sigma"]]
    out: dict[str, Any] = {"rule": notes[-1] if notes else "", "floor": None if rule is None else rule.floor,
                           "sharp": len(odd)}
    out["sharp_refused"] = sum(_focus_refused(e["rgb"], rule) for e in odd)
    copies = {f"sigma{s:g}": {"sigma": s} for s in HELD_OUT_SIGMAS} | {"source_sigma2": {"source_sigma": 2.0}}
    for key, blur in copies.items():
        out[f"{key}_refused"] = sum(_focus_refused(_shrunk(looked(name, e["source"], **blur), factor), rule)
                                    for e in odd)
    return out


def measure_combo(name: str, images: list[Path]) -> dict[str, Any]:
    """Before (shared rule) and after (the folder's own rule) for one set under one microscope."""
    entries = folder(name, images)
    notes: list[str] = []
    rule = _rule([e["scores"] for e in entries], notes.append)
    for e in entries:
        e["before"], e["after"] = _reason(e["rgb"], None), _reason(e["rgb"], rule)
    result = {"rule": notes[-1] if notes else "", "floor": None if rule is None else rule.floor,
              "before": _counts(entries, "before"), "after": _counts(entries, "after"),
              "held_out": held_out(name, entries)}
    return result


def _shrunk(rgb: np.ndarray, factor: float) -> np.ndarray:
    from edgekit.device.preprocess import opencv

    cv2 = opencv()
    return rgb if factor >= 1 else cv2.resize(rgb, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)


def at_reference_scale(name: str, images: list[Path], reference: float) -> dict[str, Any]:
    """The candidate: the folder's rule and judgements with every field shrunk to ``reference`` px of
    cell radius (one factor for the site, from its median radius; none at up to SITE_ZOOM x it)."""
    from edgekit.device.field.focus import SITE_MARKS, SITE_ZOOM, FocusRule
    from edgekit.site_focus import field_scores

    entries = folder(name, images)
    radius = float(np.median([e["scores"][2] for e in entries if e["scores"] and e["scores"][2] > 0]))
    factor = reference / radius if radius > SITE_ZOOM * reference else 1.0
    for e in entries:
        e["rgb"] = _shrunk(e["rgb"], factor)
        e["scores"] = field_scores(e["rgb"], FocusRule(marks=SITE_MARKS)) if factor < 1 else e["scores"]
    rule = _rule([e["scores"] for e in entries], lambda _: None)
    for e in entries:
        e["after"] = "out of focus" if _focus_refused(e["rgb"], rule) else None
    return {"radius": round(radius, 1), "factor": round(factor, 3),
            "floor": None if rule is None else rule.floor, "after": _counts(entries, "after"),
            "held_out": held_out(name, entries, factor)}


def iml_as_it_is() -> dict[str, Any]:
    """The 172 IML fields cut with the shared rule and with their own: refused and cut, before -> after."""
    from edgekit.cells import cut_field, fields_rule
    from edgekit.device.annotations import read_annotations
    from edgekit.paths import shared_data

    iml = shared_data("malaria_fields_iml")
    if not (iml / "annotations.json").is_file():
        return {}
    fields = read_annotations(iml / "annotations.json", iml / "images")
    rule, record = fields_rule(fields, print)
    out: dict[str, Any] = {"fields": len(fields), "rule": record["how"], "floor": record["floor"]}
    for side, r in (("before", None), ("after", rule)):
        cuts = [cut_field(af, rule=r) for af in fields]
        cut = {c: sum(sum(x[0] == c for x in k.crops) for k in cuts) for c in ("Parasitized", "Uninfected")}
        out[side] = {"refused": sum(k.rejected is not None for k in cuts), "cut": cut,
                     "refused_fields": sorted(k.field for k in cuts if k.rejected)}
        print(side, out[side])
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every-iml", type=int, default=4, help="every Nth IML field (0: none)")
    ap.add_argument("--every-bccd", type=int, default=8, help="every Nth BCCD field (0: none)")
    ap.add_argument("--no-iml-all", action="store_true", help="skip the 172 IML fields as they are")
    ap.add_argument("--reference-radius", type=float, default=0.0,
                    help="measure only the candidate at this reference cell radius (px)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default: results/site_cells_focus.json (_reference.json with --reference-radius)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    suffix = "_reference" if args.reference_radius else ""
    args.out = args.out or HERE / "results" / f"site_cells_focus{suffix}.json"
    fields = load_fields(args.every_iml, args.every_bccd)
    res: dict[str, Any] = {}
    for set_name, names in SET_COMBOS.items():
        images = [f[2] for f in fields if f[0] == set_name]
        for name in names if images else ():
            res.setdefault(set_name, {})[name] = r = (
                at_reference_scale(name, images, args.reference_radius) if args.reference_radius
                else measure_combo(name, images))
            print(set_name, name, r, flush=True)
    doc = {"reference_radius": args.reference_radius, "date": time.strftime("%Y-%m-%d"),
           "every_iml": args.every_iml, "every_bccd": args.every_bccd,
           "blurred_every": BLURRED_EVERY, "mixed_sigmas": MIXED_SIGMAS, "combos": res}
    if not (args.no_iml_all or args.reference_radius):
        doc["iml_as_it_is"] = iml_as_it_is()
    return write_results(doc, args)


if __name__ == "__main__":
    main()
