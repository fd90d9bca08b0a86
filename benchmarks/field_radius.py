"""The cell finder's cell-size estimate on parts of a field: crops, eyepiece views, rescaled copies.

    python -m edgekit.benchmarks.field_radius [--every-iml 2] [--every-bccd 4] [--half even|odd|all]

Each sampled IML and BCCD field is counted whole, as centre and corner crops of 400, 600 and 800 px
(a crop no smaller than the field is left out), in a black disc (radius 0.5 and 0.45 of the short
side), a dark-grey disc and a black frame (:mod:`edgekit.benchmarks.field_view`), and rescaled 0.7x
and 1.5x. For each: the typical radius the finder picks against the labelled boxes' median
half-size ((w + h) / 4 of the boxes wholly inside the view), and the recall (IoU 0.5) on those boxes
against the whole field's recall on the same boxes (also on the views counted only: refusals are
the quality gate's, mostly "out of focus" on crops and views). ``--half`` keeps the even or odd fields of the
sample (choose settings on one half, report on the other).

Writes ``benchmarks/results/field_radius.json`` (unless ``--no-write``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.benchmarks.field_transforms import Box, load_fields, rescale, score_cells, write_results
from edgekit.benchmarks.field_view import VIEWS, inside_boxes

HERE = Path(__file__).resolve().parent
CROPS = (400, 600, 800)
SCALES = (0.7, 1.5)


def crop(rgb: np.ndarray, side: int, corner: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A ``side`` x ``side`` crop (short side clipped to the field) at the centre (``corner`` -1)
    or at corner 0-3 (clockwise from the top left); and its top-left offset (x, y)."""
    h, w = rgb.shape[:2]
    ch, cw = min(side, h), min(side, w)
    if corner < 0:
        y, x = (h - ch) // 2, (w - cw) // 2
    else:
        y = 0 if corner in (0, 1) else h - ch
        x = 0 if corner in (0, 3) else w - cw
    return rgb[y : y + ch, x : x + cw], (x, y)


def views(rgb: np.ndarray, gt: list[Box], index: int) -> list[tuple[str, np.ndarray, list[Box], list[Box]]]:
    """(view, image, labelled boxes wholly inside it in its own pixels, the same boxes in the whole
    field's pixels) for every view of one field; ``index`` picks the crops' corner."""
    h, w = rgb.shape[:2]
    out = [("whole", rgb, gt, gt)]
    for side in CROPS:
        if side >= max(h, w):
            continue
        for where, corner in (("centre", -1), ("corner", index % 4)):
            part, (x0, y0) = crop(rgb, side, corner)
            ph, pw = part.shape[:2]
            keep = [b for b in gt if b[0] >= x0 and b[1] >= y0 and b[2] <= x0 + pw and b[3] <= y0 + ph]
            shifted = [(b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0) for b in keep]
            out.append((f"crop{side}-{where}", part, shifted, keep))
    for name, make in VIEWS.items():
        seen, inside = make(rgb)
        keep = inside_boxes(gt, inside)
        out.append((name, seen, keep, keep))
    for k in SCALES:
        out.append((f"scale{k}", np.ascontiguousarray(rescale(rgb, k)),
                    [tuple(int(round(v * k)) for v in b) for b in gt], gt))
    return out


def labelled_radius(boxes: list[Box]) -> float:
    """The labelled cells' typical radius: the median of their boxes' (w + h) / 4."""
    return float(np.median([(b[2] - b[0] + b[3] - b[1]) / 4 for b in boxes])) if boxes else 0.0


def run(fields: list, count: Callable[[np.ndarray], tuple[list, float, str | None]] | None = None
        ) -> list[dict[str, Any]]:
    """One row per field and view: radius found and labelled, recall in the view and on the whole."""
    from edgekit.device.field import count_cells
    from edgekit.device.preprocess import read_image

    count = count or count_cells
    rows = []
    for i, (set_name, name, image, gt, ignore) in enumerate(fields):
        rgb = read_image(image)
        whole_cells = None
        for view, x, boxes, whole_boxes in views(rgb, gt, i):
            t0 = time.process_time()
            cells, radius, reason = count(x)
            cpu = time.process_time() - t0
            if whole_cells is None:
                whole_cells = cells
            k = x.shape[0] / rgb.shape[0] if view.startswith("scale") else 1.0
            ign = [tuple(int(round(v * k)) for v in b) for b in ignore]
            rows.append({"set": set_name, "field": name, "view": view, "labelled": len(boxes),
                         "radius": round(radius, 2), "labelled_radius": labelled_radius(boxes),
                         "matched": score_cells(cells, boxes, ign)[1],
                         "whole_matched": score_cells(whole_cells, whole_boxes, ignore)[1],
                         "refused": reason, "cpu_s": round(cpu, 4)})
    return rows


def view_group(view: str) -> str:
    """Views summarized together: crops by size, the rest by name."""
    return view.split("-")[0] if view.startswith("crop") else view


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """{set: {view group: numbers}}: the ratio of the radius found to the labelled one (median, the
    share within 10%, 5-95% range), the same ratio relative to the whole field's, recall in the view
    and on the whole field's same boxes, refusals, median CPU seconds."""
    whole = {(r["set"], r["field"]): r for r in rows if r["view"] == "whole"}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["set"], view_group(r["view"])), []).append(r)
    out: dict[str, Any] = {}
    for (s, g), rs in groups.items():
        # a field the gate refused has no radius: the finder never ran
        sized = [r for r in rs if r["labelled_radius"] > 0 and r["labelled"] >= 5
                 and not (r["refused"] and not r["radius"])]
        ratio = np.array([r["radius"] / r["labelled_radius"] for r in sized]) if sized else np.zeros(1)
        k = [1.0 if not r["view"].startswith("scale") else float(r["view"][5:]) for r in sized]
        base = [kk * whole[(s, r["field"])]["radius"] for r, kk in zip(sized, k, strict=True)]
        rel = np.array([r["radius"] / b if b else 0.0 for r, b in zip(sized, base, strict=True)]) if sized \
            else np.zeros(1)
        labelled = sum(r["labelled"] for r in rs)
        counted = [r for r in rs if r["refused"] is None]  # the finder's part: refusals are the gate's
        n_counted = sum(r["labelled"] for r in counted)
        out.setdefault(s, {})[g] = {
            "n": len(rs), "labelled": labelled,
            "radius_ratio_median": round(float(np.median(ratio)), 3),
            "radius_within_10pct": round(float((np.abs(ratio - 1) <= 0.10).mean()), 3),
            "radius_ratio_p5_p95": [round(float(v), 3) for v in np.percentile(ratio, [5, 95])],
            "radius_vs_whole_within_10pct": round(float((np.abs(rel - 1) <= 0.10).mean()), 3),
            "recall": round(sum(r["matched"] for r in rs) / max(labelled, 1), 4),
            "whole_recall_same_boxes": round(sum(r["whole_matched"] for r in rs) / max(labelled, 1), 4),
            "recall_counted": round(sum(r["matched"] for r in counted) / max(n_counted, 1), 4),
            "whole_recall_counted": round(sum(r["whole_matched"] for r in counted) / max(n_counted, 1), 4),
            "refused": len(rs) - len(counted),
            "cpu_s_median": round(statistics.median(r["cpu_s"] for r in rs), 4),
        }
    return out


def print_summary(summary: dict[str, Any]) -> None:
    for s, per in summary.items():
        for g, r in per.items():
            print(f"{s:5s} {g:13s} n={r['n']:3d} ratio={r['radius_ratio_median']:.3f}"
                  f" within10%={r['radius_within_10pct']:.2f} p5-95={r['radius_ratio_p5_p95']}"
                  f" vs-whole10%={r['radius_vs_whole_within_10pct']:.2f}"
                  f" R={r['recall']:.3f}/{r['whole_recall_same_boxes']:.3f}"
                  f" counted R={r['recall_counted']:.3f}/{r['whole_recall_counted']:.3f}"
                  f" refused={r['refused']}"
                  f" cpu={r['cpu_s_median']:.3f}s")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every-iml", type=int, default=2)
    ap.add_argument("--every-bccd", type=int, default=4)
    ap.add_argument("--half", choices=("even", "odd", "all"), default="all",
                    help="the even or odd fields of the sample (by position in it)")
    ap.add_argument("-o", "--out", type=Path, default=HERE / "results" / "field_radius.json")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    fields = load_fields(args.every_iml, args.every_bccd)
    if args.half != "all":
        fields = [f for i, f in enumerate(fields) if i % 2 == (args.half == "odd")]
    rows = run(fields)
    summary = summarize(rows)
    print_summary(summary)
    doc = {"date": time.strftime("%Y-%m-%d"), "every_iml": args.every_iml, "every_bccd": args.every_bccd,
           "half": args.half, "summary": summary, "rows": rows}
    return write_results(doc, args)


if __name__ == "__main__":
    main()
