"""Overlapping red cells found as one object: the finder with and without the circle split.

    python -m edgekit.benchmarks.field_pairs [--compare split|rings|owned|owned_split|owned_elongated]
        [--every-iml 4] [--every-bccd 8] [--no-write]

``--compare rings``: the same measures for today's finder against the one before ring filling
(``FINDERS["rings"]``: cells read as outlines filled to their hull, the circles' radius where the
distance map's is under half of it, larger convex holes filled, small fields enlarged to the
working size, the stain colour measured above Otsu's threshold); results ``field_rings*.json``.
``--compare owned``: masks that leave out the pixels of other found regions (``own_pixels``), and
``owned_split`` with the circle split as well, ``owned_elongated`` with oblong regions split
(``split_elongation``); results ``field_<name>*.json``.

Two overlapping cells whose union has one distance peak get one seed between them, and the finder
returns one object across both. ``FieldParams.split_circles`` cuts such a region between the centres
of the cell circles found in it; ``stain_floor`` keeps the background out of the pixels that measure
the stain colour on fields with few cells. This benchmark runs the finder with both (``after``)
and with neither (``before``), alternately field by field, on every IML and
BCCD field: recall and precision at IoU 0.5 (as benchmarks/field_detection.py; IML by halves of
consecutive fields), the objects that are the best match of two or more labelled cells (IoU >= 0.3
with each: one object across two cells), fields refused, and the segmentation time ratio. Then the
transformed fields of benchmarks/field_transforms.py, before and after alternating
(``--transforms-only``, to run beside the first part).

Writes ``benchmarks/results/field_pairs.json`` (``field_pairs_transforms.json``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.benchmarks.field_detection import IOU, iou_matrix, load_iml, load_voc, match
from edgekit.benchmarks.field_transforms import TRANSFORMS, load_fields, print_results, run, write_results
from edgekit.paths import shared_data

HERE = Path(__file__).resolve().parent
PAIR_IOU = 0.3  # an object this close to two labelled cells, and the best for both, spans them


def pair_objects(boxes: list, gt: list) -> int:
    """Found objects that are the best-IoU object of two or more labelled cells (IoU >= PAIR_IOU
    with each): one object across two cells."""
    if not boxes or not gt:
        return 0
    iou = iou_matrix(boxes, gt)
    best = iou.argmax(axis=0)[iou.max(axis=0) >= PAIR_IOU]
    return int((np.bincount(best, minlength=len(boxes)) >= 2).sum())


def _fields() -> list[tuple[str, str, Path, list, list]]:
    """(set, name, image, cell boxes, boxes to ignore) for every IML and BCCD field."""
    out = []
    iml = shared_data("malaria_fields_iml")
    if (iml / "annotations.json").is_file():
        labels = load_iml(iml / "annotations.json")
        images = {p.stem: p for p in (iml / "images").iterdir()}
        out += [("iml", n, images[n], *labels[n]) for n in sorted(n for n in labels if n in images)]
    bccd = shared_data("blood_smear_fields_bccd")
    if (bccd / "JPEGImages").is_dir():
        out += [("bccd", p.stem, p, load_voc(bccd / "Annotations" / f"{p.stem}.xml"), [])
                for p in sorted((bccd / "JPEGImages").glob("*.jpg"))]
    return out


def compare(fields: list, finders: dict[str, Any]) -> list[dict[str, Any]]:
    """Per field and finder: labelled, found, matched, pair objects, refusal and seconds; the
    finders alternate on each field."""
    from edgekit.device.field import count_cells
    from edgekit.device.preprocess import read_image

    rows = []
    for set_name, name, image, gt, ignore in fields:
        rgb = read_image(image)
        for finder, p in finders.items():
            t0 = time.perf_counter()
            cells, _radius, reason = count_cells(rgb, p)
            sec = time.perf_counter() - t0
            boxes = [c.box for c in cells]
            if ignore and boxes:
                hard = iou_matrix(boxes, ignore).max(axis=1) >= IOU
                boxes = [b for b, m in zip(boxes, hard, strict=True) if not m]
            rows.append({"set": set_name, "field": name, "finder": finder, "labelled": len(gt),
                         "found": len(boxes), "matched": match(boxes, gt), "pairs": pair_objects(boxes, gt),
                         "rejected": reason, "seconds": sec})
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n_gt, n_found, tp = (sum(r[k] for r in rows) for k in ("labelled", "found", "matched"))
    return {"fields": len(rows), "labelled": n_gt, "found": n_found, "matched": tp,
            "recall": round(tp / max(n_gt, 1), 4), "precision": round(tp / max(n_found, 1), 4),
            "pair_objects": sum(r["pairs"] for r in rows),
            "refused": sum(r["rejected"] is not None for r in rows),
            "seconds": round(sum(r["seconds"] for r in rows), 2)}


def report(rows: list[dict[str, Any]], finders: list[str]) -> dict[str, Any]:
    """Summaries per set (IML also by halves of consecutive fields), the time ratio of the last
    finder to the first, and the fields the last finder refuses that the first does not."""
    out: dict[str, Any] = {}
    for s in sorted({r["set"] for r in rows}):
        names = sorted({r["field"] for r in rows if r["set"] == s})
        parts = {"all": names}
        if s == "iml":
            parts |= {"first_half": names[: len(names) // 2], "second_half": names[len(names) // 2 :]}
        for part, keep in parts.items():
            kept = set(keep)
            out.setdefault(s, {})[part] = {
                f: summarize([r for r in rows if r["set"] == s and r["field"] in kept and r["finder"] == f])
                for f in finders}
    first, last = finders[0], finders[-1]
    sec = {f: sum(r["seconds"] for r in rows if r["finder"] == f) for f in finders}
    refused = {f: {(r["set"], r["field"]) for r in rows if r["finder"] == f and r["rejected"]}
               for f in finders}
    out["segment_time_ratio"] = round(sec[last] / max(sec[first], 1e-9), 3)
    out["newly_refused"] = sorted(f"{s}/{n}" for s, n in refused[last] - refused[first])
    return out


def _split() -> tuple[dict[str, Any], tuple[str, ...]]:
    from edgekit.device.field import FieldParams

    return ({"before": FieldParams(split_circles=0, stain_floor=0),
             "after": FieldParams(split_circles=0.5, stain_floor=0.25)}, ("split_circles", "stain_floor"))


def _rings() -> tuple[dict[str, Any], tuple[str, ...]]:
    from edgekit.device.field import FieldParams

    before = FieldParams(enlarge=False, hole_area=0.5, radius_floor=0, ring_solidity=0, stain_otsu=False)
    return {"before": before, "after": FieldParams()}, (
        "enlarge", "hole_area", "radius_floor", "ring_solidity", "ring_area", "stain_otsu")


def _owned() -> tuple[dict[str, Any], tuple[str, ...]]:
    from edgekit.device.field import FieldParams

    return ({"before": FieldParams(own_pixels=False), "after": FieldParams(own_pixels=True)}, ("own_pixels",))


def _owned_split() -> tuple[dict[str, Any], tuple[str, ...]]:
    from edgekit.device.field import FieldParams

    return ({"before": FieldParams(own_pixels=False, split_circles=0),
             "after": FieldParams(own_pixels=True, split_circles=0.5)}, ("own_pixels", "split_circles"))


def _owned_elongated() -> tuple[dict[str, Any], tuple[str, ...]]:
    from edgekit.device.field import FieldParams

    # 1.6: the value RESULTS.md's "Cell radius on crowded fields" measured, not chosen here
    return ({"before": FieldParams(own_pixels=False, split_elongation=0),
             "after": FieldParams(own_pixels=True, split_elongation=1.6)}, ("own_pixels", "split_elongation"))


# the comparisons: finders (before, after) and the settings that differ between them
FINDERS: dict[str, Callable[[], tuple[dict[str, Any], tuple[str, ...]]]] = {
    "split": _split, "rings": _rings, "owned": _owned, "owned_split": _owned_split,
    "owned_elongated": _owned_elongated}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every-iml", type=int, default=4, help="transformed fields: every Nth IML field")
    ap.add_argument("--every-bccd", type=int, default=8, help="transformed fields: every Nth BCCD field")
    ap.add_argument("--transforms-only", action="store_true",
                    help="only the transformed fields (run it beside the other part: two processes)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default results/field_pairs.json, or field_pairs_transforms.json")
    ap.add_argument("--compare", choices=sorted(FINDERS), default="split")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    stem = {"split": "field_pairs", "rings": "field_rings"}.get(args.compare, f"field_{args.compare}")
    name = f"{stem}_transforms.json" if args.transforms_only else f"{stem}.json"
    args.out = args.out or HERE / "results" / name
    finders, keys = FINDERS[args.compare]()
    doc: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "iou": IOU, "pair_iou": PAIR_IOU,
                           "finders": {f: {k: getattr(p, k) for k in keys} for f, p in finders.items()}}
    if args.transforms_only:
        return _transforms(doc, args, finders)
    doc["fields"] = report(compare(_fields(), finders), list(finders))
    for s, parts in doc["fields"].items():
        if isinstance(parts, dict) and "all" in parts:
            for part, fs in parts.items():
                print(f"{s:5s} {part:11s} " + "  ".join(
                    f"{f}: R={r['recall']:.4f} P={r['precision']:.4f} pairs={r['pair_objects']}"
                    f" refused={r['refused']}" for f, r in fs.items()))
    print("segment time ratio", doc["fields"]["segment_time_ratio"],
          "newly refused", doc["fields"]["newly_refused"])
    return write_results(doc, args)


def _transforms(doc: dict[str, Any], args: argparse.Namespace, finders: dict[str, Any]) -> dict[str, Any]:
    """The transformed fields (benchmarks/field_transforms.py), before and after alternating."""
    doc["transforms"] = run(load_fields(args.every_iml, args.every_bccd), list(TRANSFORMS), finders)
    doc["every_iml"], doc["every_bccd"] = args.every_iml, args.every_bccd
    print_results(doc["transforms"])
    return write_results(doc, args)


if __name__ == "__main__":
    main()
