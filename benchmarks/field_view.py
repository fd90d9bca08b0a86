"""Fields photographed through the eyepiece: the shared IML and BCCD fields in a black disc or frame.

    python -m edgekit.benchmarks.field_view [--every-iml 4] [--every-bccd 8] [-o results/field_view.json]

Each field is counted whole, then in each view (a black disc of radius 0.5 or 0.45 of the short
side, a dark-grey disc of level 25, a black frame of 4% of the short side) with the surround
painted out (:mod:`edgekit.device.field.view`, today's code) and without (``outside_view`` off: the
code before it). Recall (IoU 0.5) is taken on the labelled cells lying wholly inside the view, for
the whole field and the view alike, so it says what the surround costs, not what it hides.
Sharp and blurred (sigma 3) copies: how many are refused, and why.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.benchmarks.field_transforms import load_fields, score_cells

HERE = Path(__file__).resolve().parent


def disc(rgb: np.ndarray, radius: float, level: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``rgb`` in a disc of ``radius`` x its short side, the rest at grey ``level``; and the view."""
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    inside = np.hypot(yy - h / 2, xx - w / 2) < radius * min(h, w)
    out = rgb.copy()
    out[~inside] = level
    return out, inside


def frame(rgb: np.ndarray, share: float = 0.04) -> tuple[np.ndarray, np.ndarray]:
    """``rgb`` in a black frame ``share`` x its short side wide; and the view."""
    b = max(1, int(share * min(rgb.shape[:2])))
    inside = np.zeros(rgb.shape[:2], bool)
    inside[b:-b, b:-b] = True
    out = rgb.copy()
    out[~inside] = 0
    return out, inside


VIEWS = {"disc0.5": lambda x: disc(x, 0.5), "disc0.45": lambda x: disc(x, 0.45),
         "grey-disc0.5": lambda x: disc(x, 0.5, 25), "frame4%": frame}


def inside_boxes(boxes: list, inside: np.ndarray) -> list:
    """The (xmin, ymin, xmax, ymax) boxes whose four corners lie inside the view."""
    h, w = inside.shape
    return [b for b in boxes if all(inside[min(y, h - 1), min(x, w - 1)]
                                    for x in (b[0], b[2] - 1) for y in (b[1], b[3] - 1))]


def run(fields: list) -> dict[str, Any]:
    """{set: {view: {mode: summary}}} for the view painted out ("view") and not ("before")."""
    import cv2

    import edgekit.device.field.count as count
    from edgekit.device.preprocess import read_image

    with_view = count.outside_view
    acc: dict[tuple, dict[str, Any]] = {}
    for set_name, _name, image, gt, ignore in fields:
        rgb = read_image(image)
        for view, make in VIEWS.items():
            seen, inside = make(rgb)
            boxes = inside_boxes(gt, inside)
            blurred = make(cv2.GaussianBlur(rgb, (0, 0), 3))[0]
            for mode in ("whole", "before", "view"):
                count.outside_view = with_view if mode != "before" else (lambda _rgb: None)
                try:
                    cells, _, reason = count.count_cells(rgb if mode == "whole" else seen)
                    blur_reason = None if mode == "whole" else count.count_cells(blurred)[2]
                finally:
                    count.outside_view = with_view
                a = acc.setdefault((set_name, view, mode), {"fields": 0, "labelled": 0, "matched": 0,
                                                            "refused": Counter(), "blurred_refused": 0})
                a["fields"] += 1
                a["labelled"] += len(boxes)
                a["matched"] += score_cells(cells, boxes, ignore)[1]
                if reason:
                    a["refused"][reason.split(" (")[0].split(";")[0]] += 1
                a["blurred_refused"] += blur_reason is not None and "focus" in blur_reason
    out: dict[str, Any] = {}
    for (s, v, m), a in acc.items():
        out.setdefault(s, {}).setdefault(v, {})[m] = {
            "fields": a["fields"], "labelled_inside": a["labelled"],
            "recall_inside": round(a["matched"] / max(a["labelled"], 1), 4),
            "refused": sum(a["refused"].values()), "refused_why": dict(a["refused"]),
            **({"blurred_refused_out_of_focus": a["blurred_refused"]} if m != "whole" else {})}
    return out


def _line(mode: str, r: dict[str, Any]) -> str:
    blurred = "" if mode == "whole" else f" blurred refused={r['blurred_refused_out_of_focus']}/{r['fields']}"
    return f"{mode}: R={r['recall_inside']:.3f} refused={r['refused']:2d}{blurred}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every-iml", type=int, default=4)
    ap.add_argument("--every-bccd", type=int, default=8)
    ap.add_argument("-o", "--out", type=Path, default=HERE / "results" / "field_view.json")
    args = ap.parse_args(argv)
    t0 = time.time()
    res = run(load_fields(args.every_iml, args.every_bccd))
    for s, per in res.items():
        for v, modes in per.items():
            print(f"{s:5s} {v:13s} " + "  ".join(_line(m, r) for m, r in modes.items()))
    doc = {"date": time.strftime("%Y-%m-%d"), "every_iml": args.every_iml, "every_bccd": args.every_bccd,
           "seconds": round(time.time() - t0), "results": res}
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


if __name__ == "__main__":
    main()
