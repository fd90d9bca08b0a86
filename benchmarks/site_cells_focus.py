"""`edgekit site cells` judged by the site's own focus rule: sharp fields of another microscope kept,
blurred ones still left out (issues 29, 22).

    python -m edgekit.benchmarks.site_cells_focus [--every-iml 4] [--every-bccd 8] [--no-iml-all]
        [--only bccd:foreign,iml:foreign-1.25]

**Combinations** (``field_transforms --combos``, the sample it uses): each set's fields made to look
like another microscope (:data:`COMBOS`), a "site folder" of them with a blurred copy of every
BLURRED_EVERY-th field mixed in (Gaussian sigma 2 and 3 in turn, in the new microscope's pixels:
after its geometry, before its camera's noise and JPEG). **Held out**: the site's rule set on the
sample's even fields (and their mixed-in copies) only, as a site bundle adapted on them would carry it
(:func:`edgekit.site_focus.images_focus`), applied to the odd fields: sharp ones kept, and copies
blurred with sigma 2 and 3 in the site's pixels, and with sigma 1-4 in the source's pixels (the same
blur for the cells as that sigma at IML's or BCCD's scale) refused. Each rule is measured without the
reference scale (``site``: the fields' own pixels, as before session 13) and with it
(``site_reference``: where the site's median cell radius is over SITE_ZOOM x REFERENCE_RADIUS, every
field judged shrunk so its cells measure REFERENCE_RADIUS), and the default bundle's shared rule.

**IML as it is** (``--no-iml-all`` to skip): the 172 IML fields through :func:`edgekit.cells.cut_field`
with the shared rule and with their own (:func:`edgekit.cells.fields_rule`): fields refused and
cells cut, before -> after.

Writes ``benchmarks/results/site_cells_focus_held_out.json`` (session 12's folder counts:
``site_cells_focus.json``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.benchmarks.field_transforms import COMBOS, HERE, load_fields, write_results

# the combinations measured per set: those ``--combos`` found refused as out of focus, and controls
SET_COMBOS = {"iml": ("original", "foreign", "foreign-1.25"),
              "bccd": ("original", "foreign", "foreign-0.8", "foreign-1.25", "foreign-0.6")}
BLURRED_EVERY = 4  # a blurred copy of every 4th field joins the folder: 1 field in 5 is blurred
MIXED_SIGMAS = (2.0, 3.0)  # the mixed-in copies' blur, in turn
HELD_OUT_SIGMAS = (2.0, 3.0)  # copies blurred in the site's pixels
SOURCE_SIGMAS = (1.0, 2.0, 3.0, 4.0)  # copies blurred in the source's pixels (at IML's or BCCD's scale)


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


def _focus_refused(rgb: np.ndarray, rule: Any) -> bool:
    """Whether ``rule`` (None: the shared one) finds the field out of focus, as the gate scores it."""
    from edgekit.device.field.focus import DEFAULT_RULE
    from edgekit.device.field.quality import field_focus

    rule = rule or DEFAULT_RULE
    score = field_focus(rgb, rule)
    return score is not None and rule.reason(score) is not None


def folder(name: str, images: list[Path]) -> list[dict[str, Any]]:
    """The site folder of microscope ``name``: each field sharp, every BLURRED_EVERY-th also blurred
    (MIXED_SIGMAS in turn); per entry its pixels, blur, position and source pixels."""
    from edgekit.device.preprocess import read_image

    out = []
    for i, image in enumerate(images):
        rgb = read_image(image)
        sigmas = [0.0]
        if i % BLURRED_EVERY == 0:
            sigmas.append(MIXED_SIGMAS[(i // BLURRED_EVERY) % len(MIXED_SIGMAS)])
        out += [{"i": i, "sigma": sigma, "rgb": looked(name, rgb, sigma), "source": rgb} for sigma in sigmas]
    return out


def site_rules(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Rule name -> FocusRule (None: the shared one) set on ``entries`` as ``site adapt`` sets it."""
    from edgekit.device.field.focus import FocusRule
    from edgekit.site_focus import images_focus

    def rule(reference: float | None) -> Any:
        focus = images_focus(entries, lambda e: e["rgb"], lambda _: None, reference)
        return None if focus is None else FocusRule.from_dict(focus)

    return {"shared": None, "site": rule(0.0), "site_reference": rule(None)}


def _record(rule: Any) -> dict[str, Any] | None:
    return None if rule is None else {k: getattr(rule, k) for k in ("floor", "reference", "radius", "source")}


def held_out(name: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Each rule set on the even fields' entries, tried on the odd fields and their blurred copies."""
    rules = site_rules([e for e in entries if e["i"] % 2 == 0])
    odd = [e for e in entries if e["i"] % 2 == 1 and not e["sigma"]]
    copies = {"sharp": {}} | {f"sigma{s:g}": {"sigma": s} for s in HELD_OUT_SIGMAS}
    copies |= {f"source_sigma{s:g}": {"source_sigma": s} for s in SOURCE_SIGMAS}
    refused = {key: dict.fromkeys(rules, 0) for key in copies}
    for e in odd:
        for key, blur in copies.items():
            x = e["rgb"] if not blur else looked(name, e["source"], **blur)
            for r, rule in rules.items():
                refused[key][r] += _focus_refused(x, rule)
    return {"fields": len(odd), "rules": {r: _record(rule) for r, rule in rules.items()}, "refused": refused}


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
    ap.add_argument("--only", default="", help="set:combination pairs, comma-separated (default: all)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "site_cells_focus_held_out.json")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    fields = load_fields(args.every_iml, args.every_bccd)
    res: dict[str, Any] = {}
    for set_name, names in SET_COMBOS.items():
        images = [f[2] for f in fields if f[0] == set_name]
        for name in names if images else ():
            if args.only and f"{set_name}:{name}" not in args.only.split(","):
                continue
            res.setdefault(set_name, {})[name] = r = held_out(name, folder(name, images))
            print(set_name, name, r, flush=True)
    doc = {"date": time.strftime("%Y-%m-%d"), "every_iml": args.every_iml, "every_bccd": args.every_bccd,
           "blurred_every": BLURRED_EVERY, "mixed_sigmas": MIXED_SIGMAS, "held_out": res}
    if not args.no_iml_all:
        doc["iml_as_it_is"] = iml_as_it_is()
    return write_results(doc, args)


if __name__ == "__main__":
    main()
