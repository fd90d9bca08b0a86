"""Where an adapted site bundle's whole-field parasitemia error comes from (issue 21).

    edgekit site adapt edgekit/models/default --data IML_CELLS -o WORK/seed0 --seed 0   # and 1, 2
    python -m edgekit.benchmarks.site_error_sources --data IML_CELLS WORK/seed0 WORK/seed1 ... \
        [--fields DIR --annotations FILE] [--compare owned] [-o results.json]

Every field of the site is found and cut as ``edgekit field`` does and every found object is
classified by each bundle's device model (the format its manifest runs). Each object is put in one
category by the boxes: a labelled parasitized cell, a labelled uninfected one, an object near a
parasite box (IoU >= 0.1), a ``difficult`` one, or an object no box matches; and by how the finder
separated it (:data:`edgekit.device.field.types.SEPARATIONS`) and whether it touches the border.
For each bundle, on its own test fields (no training, threshold or guard saw them):

- the cells it called at its cutoff, by category and separation;
- the fields with the largest error, with what was called there;
- the whole-field error at the bundle's own cutoff, as the device counts;
- the whole-field error at other cutoffs (``error_by_cutoff``: fully labelled validation fields, all
  test fields, fully labelled test fields);
- the whole-field error when a kind of object is left out of the count (numerator and
  denominator), the cutoff chosen again on the bundle's fully labelled validation fields as adapt
  chooses it (:func:`edgekit.adapt.field_error_cutoff`).

``--orientations NAME``: each object's probability is the mean over the crop turned and flipped
(:data:`ORIENTATIONS`: test-time augmentation over the flips and quarter turns the models were trained
with), the cutoff chosen again on the fully labelled validation fields as adapt chooses it.

``--compare NAME``: all of it for the two finders of benchmarks/field_pairs.py's comparison NAME
(before, after; the bundles are not retrained), and one line per bundle side by side.

It writes numbers only: site data such as IML has no licence to ship.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.benchmarks.field_pairs import FINDERS

RULES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "every object (as the device counts)": lambda o: True,
    "without pieces cut from overlapping cells": lambda o: o["separation"] != "overlapping",
    "without cells at the border": lambda o: not o["edge"],
    "without either": lambda o: o["separation"] != "overlapping" and not o["edge"],
    "lone cells only": lambda o: o["separation"] == "alone",
}
CUTOFF_GRID = (0.5, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99)  # error_by_cutoff
# test-time augmentation: indices into dihedral_views()'s eight views of a batch of crops
ORIENTATIONS: dict[str, tuple[int, ...]] = {"none": (0,), "flip4": (0, 1, 4, 5), "rot4": (0, 2, 4, 6),
                                            "all8": tuple(range(8))}
PARASITE_NEAR = 0.1  # IoU with a parasite box that makes an unmatched object "near a parasite"


def dihedral_views(x: np.ndarray) -> list[np.ndarray]:
    """A batch of crops (N, H, W, C) in its eight orientations: each quarter turn, then flipped."""
    views = []
    for k in range(4):
        turned = np.rot90(x, k, axes=(1, 2))
        views += [np.ascontiguousarray(turned), np.ascontiguousarray(turned[:, :, ::-1])]
    return views


def found_objects(fields_dir: Path, annotations: Path, bundles: list[Path], min_iou: float,
                  params: Any = None, orientations: tuple[int, ...] = (0,),
                  ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Every object the finder (``params``: its :class:`~edgekit.device.field.FieldParams`, None:
    the default) returns on every annotated field, with its category, separation, border flag and
    each bundle's probability (the mean over the crop's ``orientations``, :func:`dihedral_views`);
    and the labelled parasitemia per field."""
    from edgekit.adapt import device_format, device_probs
    from edgekit.cells import box_iou, match_boxes
    from edgekit.device.annotations import PARASITIZED, read_annotations
    from edgekit.device.field import count_cells, crop_cell
    from edgekit.device.preprocess import prepare, read_image
    from edgekit.manifest import load_manifest

    manifests = [load_manifest(b) for b in bundles]
    predict = [device_probs(b, m, device_format(m)) for b, m in zip(bundles, manifests, strict=True)]
    objects: list[dict[str, Any]] = []
    truth: dict[str, float] = {}
    for af in read_annotations(annotations, fields_dir):
        stem = Path(af.name).stem
        labelled = [b for b in af.boxes if b.label is not None]
        truth[stem] = sum(b.label == PARASITIZED for b in labelled) / max(1, len(labelled))
        rgb = read_image(fields_dir / af.name)
        cells, _, reason = count_cells(rgb, params)
        if reason or not cells:
            continue
        boxes = [c.box for c in cells]
        probs = [np.zeros(len(cells))] * len(bundles)
        for k, m in enumerate(manifests):
            views = dihedral_views(np.stack([prepare(crop_cell(rgb, c), m.preprocessing) for c in cells]))
            probs[k] = np.mean([predict[k](views[i]) for i in orientations], axis=0)
        matched = {j: af.boxes[i] for i, j, _ in match_boxes(af.boxes, boxes, min_iou)}
        parasites = [(b.x0, b.y0, b.x1, b.y1) for b in af.boxes if b.label == PARASITIZED]
        near = ((box_iou(np.array(parasites), np.array(boxes)) >= PARASITE_NEAR).any(axis=0)
                if parasites else np.zeros(len(cells), bool))
        for j, c in enumerate(cells):
            box = matched.get(j)
            category = ("unboxed" if box is None else box.label or box.source_label)
            if category == "unboxed" and near[j]:
                category = "near a parasite box"
            objects.append({"field": stem, "category": category, "separation": c.separation,
                            "edge": c.edge, "p": [float(q[j]) for q in probs]})
    return objects, truth


def bundle_sources(objects: list[dict[str, Any]], truth: dict[str, float], k: int, bundle: Path,
                   site: Path, top: int = 8) -> dict[str, Any]:
    """Bundle ``k``'s calls and errors on its own test fields."""
    from edgekit.adapt import field_error_cutoff, incompletely_labelled_fields
    from edgekit.manifest import load_manifest

    parts = json.loads((bundle / "site_fields.json").read_text())
    cutoff = load_manifest(bundle).thresholds.cutoff
    sparse = incompletely_labelled_fields(site)
    test, val = set(parts["test"]), [f for f in parts["val"] if f not in sparse]
    by_field = objects_by_field(objects)
    called: Counter[str] = Counter()
    for o in objects:
        if o["field"] in test and o["p"][k] >= cutoff:
            called[f"{o['category']} / {o['separation']}{' / border' if o['edge'] else ''}"] += 1

    def error(keep: Callable[[dict[str, Any]], bool], cut: float, fields: list[str]) -> float:
        errs = []
        for f in fields:
            p = np.array([o["p"][k] for o in by_field[f] if keep(o)])
            if len(p):
                errs.append(abs(float(np.mean(p >= cut)) - truth[f]))
        return round(100 * float(np.mean(errs)), 3) if errs else float("nan")

    tested = sorted(f for f in test if by_field[f])
    full = [f for f in tested if f not in sparse]
    rules = {}
    for name, keep in RULES.items():
        cut = field_error_cutoff([np.array([o["p"][k] for o in by_field[f] if keep(o)]) for f in val],
                                 [truth[f] for f in val])
        rules[name] = {"cutoff": round(cut, 4), "test_mae_points": error(keep, cut, tested),
                       "fully_labelled_test_mae_points": error(keep, cut, full)}
    # as the bundle counts on the device: its own cutoff, not chosen again for these objects
    own = {"test_mae_points": error(lambda o: True, cutoff, tested),
           "fully_labelled_test_mae_points": error(lambda o: True, cutoff, full)}
    worst = []
    for f in tested:
        p = np.array([o["p"][k] for o in by_field[f]])
        worst.append({"field": f, "incompletely_labelled": f in sparse, "found": len(p),
                      "error_points": round(100 * (float(np.mean(p >= cutoff)) - truth[f]), 2),
                      "called": dict(Counter(o["category"] for o in by_field[f] if o["p"][k] >= cutoff))})
    worst.sort(key=lambda r: -abs(r["error_points"]))
    every = RULES["every object (as the device counts)"]
    # the count at other cutoffs: where the fully labelled validation fields, all test fields and the
    # fully labelled ones would each put it
    by_cutoff = {f"{c:g}": {"val_fully_labelled": error(every, c, val), "test": error(every, c, tested),
                            "test_fully_labelled": error(every, c, full)} for c in CUTOFF_GRID}
    return {"bundle": bundle.name, "cutoff": round(cutoff, 4), "test_fields": len(tested),
            "error_by_cutoff": by_cutoff,
            "incompletely_labelled_test_fields": len(tested) - len(full),
            "called_on_test_fields": dict(called.most_common()), "at_bundle_cutoff": own, "rules": rules,
            "worst_fields": worst[:top]}


def objects_by_field(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """:func:`found_objects`' objects grouped by field (a field with none maps to [])."""
    by_field: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for o in objects:
        by_field[o["field"]].append(o)
    return by_field


def site_bundles_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every replay of kept site bundles takes: the bundles, the site cells they were
    adapted on, and the annotated fields (IML's by default)."""
    from edgekit.paths import shared_data

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("bundles", nargs="+", type=Path, help="adapted site bundles (edgekit site adapt)")
    ap.add_argument("--data", type=Path, required=True, help="the site cells they were adapted on")
    iml = shared_data("malaria_fields_iml")
    ap.add_argument("--fields", type=Path, default=iml / "images")
    ap.add_argument("--annotations", type=Path, default=iml / "annotations.json")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = site_bundles_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--min-iou", type=float, default=0.4, help="as edgekit site cells matches boxes")
    ap.add_argument("--orientations", choices=sorted(ORIENTATIONS), default="none",
                    help="test-time augmentation: mean probability over these views of each crop")
    ap.add_argument("--compare", choices=sorted(FINDERS),
                    help="the finders of benchmarks/field_pairs.py's comparison, before and after")
    ap.add_argument("-o", "--out", type=Path)
    a = ap.parse_args(argv)
    if a.compare:
        finders, keys = FINDERS[a.compare]()
        result = {"finders": {f: {k: getattr(p, k) for k in keys} for f, p in finders.items()}}
        result |= {f: sources(a, p) for f, p in finders.items()}
        _print_side_by_side(result, list(finders))
    else:
        result = sources(a)
        _print(result)
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")


def sources(a: argparse.Namespace, params: Any = None) -> dict[str, Any]:
    """The objects of every field (the finder with ``params``) and each bundle's error sources."""
    objects, truth = found_objects(a.fields, a.annotations, a.bundles, a.min_iou, params,
                                   ORIENTATIONS[a.orientations])
    found = Counter(f"{o['category']} / {o['separation']}" for o in objects)
    return {"fields": len(truth), "objects": len(objects), "found_by_category": dict(found.most_common()),
            "bundles": [bundle_sources(objects, truth, k, b, a.data) for k, b in enumerate(a.bundles)]}


def unboxed_called(b: dict[str, Any]) -> int:
    """Objects no box matches that a bundle called parasitized on its test fields."""
    return sum(n for k, n in b["called_on_test_fields"].items() if k.startswith("unboxed"))


def _print(result: dict[str, Any]) -> None:
    for b in result["bundles"]:
        print(f"{b['bundle']}: cutoff {b['cutoff']}, {b['test_fields']} test fields")
        for name, r in b["rules"].items():
            print(f"  {name:45s} error {r['test_mae_points']:.2f} "
                  f"(fully labelled {r['fully_labelled_test_mae_points']:.2f}) at cutoff {r['cutoff']}")
        print("  called:", b["called_on_test_fields"])
        for name in ("val_fully_labelled", "test", "test_fully_labelled"):
            print(f"  error at cutoff {name:20s}", " ".join(
                f"{c}:{r[name]:.2f}" for c, r in b["error_by_cutoff"].items()))


def _print_side_by_side(result: dict[str, Any], finders: list[str]) -> None:
    print("objects", " -> ".join(str(result[f]["objects"]) for f in finders))
    for k, b in enumerate(result[finders[0]]["bundles"]):
        rows = [result[f]["bundles"][k] for f in finders]
        at = [r["at_bundle_cutoff"] for r in rows]
        every = [r["rules"]["every object (as the device counts)"] for r in rows]
        print(f"{b['bundle']}: error at its cutoff " + " -> ".join(f"{e['test_mae_points']:.2f}" for e in at)
              + " (fully labelled " + " -> ".join(f"{e['fully_labelled_test_mae_points']:.2f}" for e in at)
              + "), cutoff chosen again on val " + " -> ".join(f"{e['test_mae_points']:.2f}" for e in every)
              + " (fully labelled " + " -> ".join(f"{e['fully_labelled_test_mae_points']:.2f}" for e in every)
              + ")"
              + ", called " + " -> ".join(str(sum(r["called_on_test_fields"].values())) for r in rows)
              + ", unboxed called " + " -> ".join(str(unboxed_called(r)) for r in rows))


if __name__ == "__main__":
    main()
