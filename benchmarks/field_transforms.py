"""Cell finding on transformed fields: another stain shade, lamp, exposure or magnification.

    python -m edgekit.benchmarks.field_transforms [--every-iml 4] [--every-bccd 8] [--no-write]

Applies to a sample of the IML and BCCD fields (every Nth) the look of another site: hue rotated
(in the Lab a/b plane, lightness kept; negative angles turn magenta towards blue), desaturated,
a brightened background (per-channel gain that clips the background to white), scaled 0.7x and
1.5x, one combination (blue-grey cells on a pale, white background), and vignettes (0.8x, 0.7x and 0.5x
brightness at the corners). Each finder (``finders()``: today's defaults, the same without flattening
uneven lighting, and the colour-window settings kept for comparison) is measured on the same
transformed fields, alternately field by field, so times compare: recall and precision at IoU 0.5
(as benchmarks/field_detection.py), fields refused and why, median segmentation time.

Writes ``benchmarks/results/field_transforms.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.benchmarks.field_detection import IOU, iou_matrix, load_iml, load_voc, match
from edgekit.paths import shared_data

HERE = Path(__file__).resolve().parent
Box = tuple[int, int, int, int]


def opencv():
    from edgekit.device.preprocess import opencv as cv2

    return cv2()


def rotate_hue(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """Hue rotated by ``degrees`` in the Lab a/b plane (lightness kept)."""
    cv2 = opencv()
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    a, b = lab[..., 1] - 128, lab[..., 2] - 128
    t = np.deg2rad(degrees)
    lab[..., 1] = 128 + a * np.cos(t) - b * np.sin(t)
    lab[..., 2] = 128 + a * np.sin(t) + b * np.cos(t)
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def desaturate(rgb: np.ndarray, keep: float) -> np.ndarray:
    """Chroma (Lab a/b) scaled by ``keep``: 0 is grey."""
    cv2 = opencv()
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab[..., 1:] = 128 + (lab[..., 1:] - 128) * keep
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def brighten(rgb: np.ndarray, percentile: float = 60.0) -> np.ndarray:
    """Per-channel gain that maps the channel's ``percentile`` (background) to white, clipped: a
    lamp turned up, or auto-exposure that whitens the background."""
    p = np.percentile(rgb.reshape(-1, 3), percentile, axis=0)
    return np.clip(rgb.astype(np.float32) * (255.0 / np.maximum(p, 1.0)), 0, 255).astype(np.uint8)


def rescale(rgb: np.ndarray, factor: float) -> np.ndarray:
    cv2 = opencv()
    h, w = rgb.shape[:2]
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return cv2.resize(rgb, (round(w * factor), round(h * factor)), interpolation=interp)


def vignette(rgb: np.ndarray, corner: float) -> np.ndarray:
    """A lens or eyepiece vignette: brightness falling with the squared distance from the centre to
    ``corner`` x at the corners."""
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
    return np.clip(rgb * (1 - (1 - corner) * r2)[..., None], 0, 255).astype(np.uint8)


# name -> (image transform, box scale)
TRANSFORMS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "original": (lambda x: x, 1.0),
    "hue-40": (lambda x: rotate_hue(x, -40), 1.0),
    "hue-80": (lambda x: rotate_hue(x, -80), 1.0),
    "hue+90": (lambda x: rotate_hue(x, 90), 1.0),
    "desat0.3": (lambda x: desaturate(x, 0.3), 1.0),
    "grey": (lambda x: desaturate(x, 0.0), 1.0),
    "bright": (brighten, 1.0),
    "scale0.7": (lambda x: rescale(x, 0.7), 0.7),
    "scale1.5": (lambda x: rescale(x, 1.5), 1.5),
    "blue-pale": (lambda x: brighten(desaturate(rotate_hue(x, -80), 0.5)), 1.0),
    "vignette0.8": (lambda x: vignette(x, 0.8), 1.0),
    "vignette0.7": (lambda x: vignette(x, 0.7), 1.0),
    "vignette0.5": (lambda x: vignette(x, 0.5), 1.0),
}


def finders() -> dict[str, Any]:
    """The finders compared: today's defaults, and the earlier colour-window settings."""
    from edgekit.device.field import FieldParams

    out: dict[str, Any] = {"default": FieldParams(), "unflattened": FieldParams(max_falloff=None)}
    legacy = getattr(FieldParams, "legacy", None)
    if legacy is not None:
        out["green-window"] = legacy()
    return out


def load_fields(every_iml: int, every_bccd: int) -> list[tuple[str, str, Path, list[Box], list[Box]]]:
    """(set, name, image, cell boxes, boxes to ignore) for every Nth IML and BCCD field."""
    out = []
    iml = shared_data("malaria_fields_iml")
    if (iml / "annotations.json").is_file() and every_iml:
        labels = load_iml(iml / "annotations.json")
        images = {p.stem: p for p in (iml / "images").iterdir()}
        for n in sorted(n for n in labels if n in images)[::every_iml]:
            out.append(("iml", n, images[n], labels[n][0], labels[n][1]))
    bccd = shared_data("blood_smear_fields_bccd")
    if (bccd / "JPEGImages").is_dir() and every_bccd:
        for p in sorted((bccd / "JPEGImages").glob("*.jpg"))[::every_bccd]:
            out.append(("bccd", p.stem, p, load_voc(bccd / "Annotations" / f"{p.stem}.xml"), []))
    return out


def score_cells(cells: list, gt: list[Box], ignore: list[Box]) -> tuple[int, int]:
    boxes = [c.box for c in cells]
    if ignore and boxes:
        hard = iou_matrix(boxes, ignore).max(axis=1) >= IOU
        boxes = [b for b, m in zip(boxes, hard, strict=True) if not m]
    return len(boxes), match(boxes, gt)


def run(fields: list, transforms: list[str], params: dict[str, Any]) -> dict[str, Any]:
    """{set: {transform: {finder: summary}}}, finders alternating on each transformed field."""
    from edgekit.device.field import count_cells
    from edgekit.device.preprocess import read_image

    acc: dict[tuple[str, str, str], dict[str, Any]] = {}
    for set_name, _name, image, gt, ignore in fields:
        rgb = read_image(image)
        for t in transforms:
            fn, k = TRANSFORMS[t]
            x = np.ascontiguousarray(fn(rgb))
            g = [tuple(int(round(v * k)) for v in b) for b in gt]
            ign = [tuple(int(round(v * k)) for v in b) for b in ignore]
            for finder, p in params.items():
                t0 = time.perf_counter()
                cells, _radius, reason = count_cells(x, p)
                sec = time.perf_counter() - t0
                found, tp = score_cells(cells, g, ign)
                a = acc.setdefault((set_name, t, finder), {"fields": 0, "labelled": 0, "found": 0,
                                                           "matched": 0, "refused": Counter(), "ms": []})
                a["fields"] += 1
                a["labelled"] += len(g)
                a["found"] += found
                a["matched"] += tp
                a["ms"].append(1000 * sec)
                if reason:
                    a["refused"][reason.split(" (")[0]] += 1
    out: dict[str, Any] = {}
    for (s, t, f), a in acc.items():
        out.setdefault(s, {}).setdefault(t, {})[f] = {
            "fields": a["fields"], "labelled": a["labelled"], "found": a["found"], "matched": a["matched"],
            "recall": round(a["matched"] / max(a["labelled"], 1), 4),
            "precision": round(a["matched"] / max(a["found"], 1), 4),
            "refused": sum(a["refused"].values()), "refused_why": dict(a["refused"]),
            "segment_ms_median": round(statistics.median(a["ms"]), 1),
        }
    return out


def print_results(res: dict[str, Any]) -> None:
    """One line per set and transform: each finder's recall, precision, refusals and time."""
    for s, per in res.items():
        for t, fs in per.items():
            print(f"{s:5s} {t:10s} " + "  ".join(
                f"{f}: R={r['recall']:.3f} P={r['precision']:.3f} refused={r['refused']:2d}"
                f" {r['segment_ms_median']:.0f}ms" for f, r in fs.items()))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every-iml", type=int, default=4, help="every Nth IML field (0: none)")
    ap.add_argument("--every-bccd", type=int, default=8, help="every Nth BCCD field (0: none)")
    ap.add_argument("--transforms", default=",".join(TRANSFORMS))
    ap.add_argument("--finders", default=None, help="comma-separated subset of the finders")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "field_transforms.json")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    params = finders()
    if args.finders:
        params = {k: v for k, v in params.items() if k in args.finders.split(",")}
    fields = load_fields(args.every_iml, args.every_bccd)
    res = run(fields, args.transforms.split(","), params)
    print_results(res)
    doc = {"date": time.strftime("%Y-%m-%d"), "every_iml": args.every_iml, "every_bccd": args.every_bccd,
           "iou": IOU, "results": res}
    return write_results(doc, args)


def write_results(doc: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Write ``doc`` to ``args.out`` unless ``args.no_write``; returns it."""
    if not args.no_write:
        args.out.parent.mkdir(exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


if __name__ == "__main__":
    main()
