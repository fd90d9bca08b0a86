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

``--combos``: another microscope all at once (:data:`COMBOS`): blue-grey or pale stain on a
whitened background, another magnification (the centre cropped and enlarged, or the field extended
by its mirror image and shrunk: cells 0.6-1.25x their size in the same pixels), resampled to
1600x1200, and another camera (a slight vignette, sensor noise, JPEG quality 70-85). The whole
device gate and finder (``count_cells``) on each, against the boxes moved likewise: refusals by
kind ("out of focus", "no red cells found", "overexposed", other), recall and precision, and the
radius found / the boxes' median radius; each also on the sample's even fields (``tune``, to
choose anything on) and odd fields (``report``).

Writes ``benchmarks/results/field_transforms.json`` (``field_combos.json`` with ``--combos``).
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


def _seed(rgb: np.ndarray) -> int:
    """A seed drawn from the field's own pixels: the same field gets the same camera noise."""
    return int(rgb[::37, ::41].astype(np.int64).sum())


def fade(rgb: np.ndarray, keep: float) -> np.ndarray:
    """A paler stain: every channel's optical density against its background (95th percentile)
    scaled by ``keep`` (1: as it is, 0: nothing stained)."""
    bg = np.maximum(np.percentile(rgb.reshape(-1, 3), 95, axis=0), 1.0).astype(np.float32)
    ratio = np.maximum(rgb.astype(np.float32), 1.0) / bg
    return np.clip(bg * ratio**keep, 0, 255).astype(np.uint8)


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """The field saved as JPEG at ``quality`` and decoded again (a camera's compression)."""
    cv2 = opencv()
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok, "JPEG encoding failed"
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def noise(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian sensor noise of ``sigma`` grey levels (seeded by the field)."""
    rng = np.random.default_rng(_seed(rgb))
    return np.clip(rgb + rng.normal(0.0, sigma, rgb.shape), 0, 255).astype(np.uint8)


def camera(quality: int, sigma: float = 3.0, corner: float = 0.85) -> Callable[[np.ndarray], np.ndarray]:
    """Another camera: a slight vignette, mild sensor noise, then JPEG at ``quality``."""
    return lambda x: jpeg(noise(vignette(x, corner), sigma), quality)


def _clip_boxes(boxes: list[Box], w: int, h: int, keep: float = 0.5) -> list[Box]:
    """Boxes cut to a w x h image; those with less than ``keep`` of their area left are dropped."""
    out = []
    for x0, y0, x1, y1 in boxes:
        c = (max(0, x0), max(0, y0), min(w, x1), min(h, y1))
        if c[2] > c[0] and c[3] > c[1] and (c[2] - c[0]) * (c[3] - c[1]) >= keep * (x1 - x0) * (y1 - y0):
            out.append(c)
    return out


def _scale_boxes(boxes: list[Box], kx: float, ky: float) -> list[Box]:
    return [(round(a * kx), round(b * ky), round(c * kx), round(d * ky)) for a, b, c, d in boxes]


def _mirrored(boxes: list[Box], w: int, h: int) -> list[Box]:
    """The boxes and their mirror images across each side and corner (``BORDER_REFLECT``)."""
    xs = [lambda a, b: (a, b), lambda a, b: (-b, -a), lambda a, b: (2 * w - b, 2 * w - a)]
    ys = [lambda a, b: (a, b), lambda a, b: (-b, -a), lambda a, b: (2 * h - b, 2 * h - a)]
    out = []
    for x0, y0, x1, y1 in boxes:
        for fx in xs:
            for fy in ys:
                (a, c), (b, d) = fx(x0, x1), fy(y0, y1)
                out.append((a, b, c, d))
    return out


def zoom(rgb: np.ndarray, boxes: list[list[Box]], factor: float) -> tuple[np.ndarray, list[list[Box]]]:
    """Another magnification on the same camera: cells ``factor`` x their size in a field of the same
    pixels. Above 1 the centre is cropped and enlarged; below 1 the field is extended by its mirror
    image (reflected at the borders) and shrunk. ``boxes``: lists of boxes, mapped likewise."""
    cv2 = opencv()
    h, w = rgb.shape[:2]
    if factor >= 1:
        cw, ch = round(w / factor), round(h / factor)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        out = rgb[y0 : y0 + ch, x0 : x0 + cw]
        moved = [[(a - x0, b - y0, c - x0, d - y0) for a, b, c, d in bs] for bs in boxes]
        moved = [_clip_boxes(bs, cw, ch) for bs in moved]
    else:
        px, py = round(w * (1 / factor - 1) / 2), round(h * (1 / factor - 1) / 2)
        out = cv2.copyMakeBorder(rgb, py, py, px, px, cv2.BORDER_REFLECT)
        moved = [[(a + px, b + py, c + px, d + py) for a, b, c, d in _mirrored(bs, w, h)] for bs in boxes]
        moved = [_clip_boxes(bs, w + 2 * px, h + 2 * py) for bs in moved]
    kx, ky = w / out.shape[1], h / out.shape[0]
    big = cv2.resize(out, (w, h), interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    return big, [_scale_boxes(bs, kx, ky) for bs in moved]


def to_size(rgb: np.ndarray, boxes: list[list[Box]], width: int = 1600) -> tuple[np.ndarray, list[list[Box]]]:
    """The field resampled to ``width`` pixels wide (another camera's pixel count, same view)."""
    k = width / rgb.shape[1]
    return rescale(rgb, k), [_scale_boxes(bs, k, k) for bs in boxes]


def blue_grey(rgb: np.ndarray) -> np.ndarray:
    """Cells stained blue-grey: hue turned 80 degrees towards blue, half the chroma."""
    return desaturate(rotate_hue(rgb, -80), 0.5)


Geometry = Callable[[np.ndarray, list[list[Box]]], tuple[np.ndarray, list[list[Box]]]]

# another microscope all at once: name -> (stain and lamp, geometry, camera). Stain and lamp act on
# the field as captured, the camera (vignette, noise, JPEG) on what the new sensor records
COMBOS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Geometry, Callable[[np.ndarray], np.ndarray]]] = {
    "foreign": (lambda x: brighten(blue_grey(x)), to_size, camera(75)),
    "foreign-pale": (lambda x: brighten(fade(blue_grey(x), 0.6)), to_size, camera(75)),
    "foreign-0.8": (lambda x: brighten(blue_grey(x)), lambda x, b: to_size(*zoom(x, b, 0.8)), camera(80)),
    "foreign-pale-0.8": (lambda x: brighten(fade(blue_grey(x), 0.6)),
                         lambda x, b: to_size(*zoom(x, b, 0.8)), camera(70)),
    "foreign-1.25": (lambda x: brighten(blue_grey(x)), lambda x, b: to_size(*zoom(x, b, 1.25)), camera(85)),
    "foreign-0.6": (lambda x: brighten(blue_grey(x)), lambda x, b: to_size(*zoom(x, b, 0.6)), camera(80)),
    "grey-pale": (lambda x: brighten(fade(desaturate(x, 0.15), 0.5)), to_size, camera(70, 4.0, 0.8)),
}


def transformed(name: str, rgb: np.ndarray, gt: list[Box], ignore: list[Box]
                ) -> tuple[np.ndarray, list[Box], list[Box]]:
    """The field and its boxes (cells, boxes to ignore) under transform or combination ``name``."""
    if name in COMBOS:
        stain, geometry, cam = COMBOS[name]
        x, (g, ign) = geometry(stain(rgb), [gt, ignore])
        return np.ascontiguousarray(cam(x)), g, ign
    fn, k = TRANSFORMS[name]
    return (np.ascontiguousarray(fn(rgb)), [tuple(int(round(v * k)) for v in b) for b in gt],
            [tuple(int(round(v * k)) for v in b) for b in ignore])


def finders() -> dict[str, Any]:
    """The finders to compare: today's defaults, without flattening, with the smaller-circle search
    always or never, and the earlier colour-window settings."""
    from edgekit.device.field import FieldParams

    out: dict[str, Any] = {"default": FieldParams(), "unflattened": FieldParams(max_falloff=None),
                           # the smaller-circle search on every field whose first circles disagree,
                           # and never (issue 29: its cost)
                           "small-always": FieldParams(small_skip=0.0),
                           "small-never": FieldParams(small_circles=0.0)}
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


def _category(reason: str) -> str:
    """A refusal's kind: "out of focus", "no red cells found", "overexposed", or "other"."""
    for kind in ("out of focus", "no red cells found", "overexposed"):
        if reason.startswith(kind):
            return kind
    return "other"


def _box_radius(gt: list[Box]) -> float:
    """The labelled cells' median radius (a quarter of width + height)."""
    return float(np.median([(b[2] - b[0] + b[3] - b[1]) / 4 for b in gt])) if gt else 0.0


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Recall, precision, refusals (by reason and kind), radius found / labelled, median time."""
    labelled, found, matched = (sum(r[k] for r in rows) for k in ("labelled", "found", "matched"))
    why = Counter(r["reason"].split(" (")[0] for r in rows if r["reason"])
    kinds = Counter(_category(r["reason"]) for r in rows if r["reason"])
    ratios = [r["radius"] / r["box_radius"] for r in rows if not r["reason"] and r["box_radius"]]
    return {
        "fields": len(rows), "labelled": labelled, "found": found, "matched": matched,
        "recall": round(matched / max(labelled, 1), 4), "precision": round(matched / max(found, 1), 4),
        "refused": sum(why.values()), "refused_why": dict(why), "refused_kind": dict(kinds),
        "radius_ratio_median": round(float(np.median(ratios)), 3) if ratios else None,
        "radius_ratio_10_90": [round(float(v), 3) for v in np.percentile(ratios, [10, 90])]
        if ratios else None,
        "segment_ms_median": round(statistics.median(r["ms"] for r in rows), 1),
        "cpu_s": round(sum(r.get("cpu", 0.0) for r in rows), 2),  # gate and finder, process time
    }


def run(fields: list, transforms: list[str], params: dict[str, Any]) -> dict[str, Any]:
    """{set: {transform: {finder: summary}}}, finders alternating on each transformed field; each
    summary also holds ``halves``: the same on the sample's even fields ("tune", to choose anything
    on) and odd fields ("report")."""
    from edgekit.device.field import count_cells
    from edgekit.device.preprocess import read_image

    acc: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    position: Counter = Counter()
    for set_name, _name, image, gt, ignore in fields:
        rgb = read_image(image)
        half = "tune" if position[set_name] % 2 == 0 else "report"
        position[set_name] += 1
        for t in transforms:
            x, g, ign = transformed(t, rgb, gt, ignore)
            for finder, p in params.items():
                t0, c0 = time.perf_counter(), time.process_time()
                cells, radius, reason = count_cells(x, p)
                sec, cpu = time.perf_counter() - t0, time.process_time() - c0
                found, tp = score_cells(cells, g, ign)
                acc.setdefault((set_name, t, finder), []).append(
                    {"half": half, "labelled": len(g), "found": found, "matched": tp, "reason": reason,
                     "radius": radius, "box_radius": _box_radius(g), "ms": 1000 * sec,
                     "cpu": cpu})
    out: dict[str, Any] = {}
    for (s, t, f), rows in acc.items():
        summary = _summary(rows)
        summary["halves"] = {h: _summary([r for r in rows if r["half"] == h])
                             for h in ("tune", "report") if any(r["half"] == h for r in rows)}
        out.setdefault(s, {}).setdefault(t, {})[f] = summary
    return out


def print_results(res: dict[str, Any]) -> None:
    """One line per set and transform: each finder's recall, precision, refusals and time."""
    for s, per in res.items():
        for t, fs in per.items():
            print(f"{s:5s} {t:16s} " + "  ".join(
                f"{f}: R={r['recall']:.3f} P={r['precision']:.3f} refused={r['refused']:2d}"
                f" {r['refused_kind']} r/box={r['radius_ratio_median']}"
                f" {r['segment_ms_median']:.0f}ms cpu={r['cpu_s']:.1f}s" for f, r in fs.items()))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every-iml", type=int, default=4, help="every Nth IML field (0: none)")
    ap.add_argument("--every-bccd", type=int, default=8, help="every Nth BCCD field (0: none)")
    ap.add_argument("--transforms", default=",".join(TRANSFORMS),
                    help=f"comma-separated; also the combinations {','.join(COMBOS)} (--combos: those)")
    ap.add_argument("--combos", action="store_true",
                    help="original + every combination; results field_combos.json")
    ap.add_argument("--finders", default=None, help="comma-separated, of finders() (default: default,"
                    "unflattened,green-window)")
    ap.add_argument("--out", type=Path, default=None, help="default: results/field_transforms.json"
                    " (field_combos.json with --combos)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    chosen = (args.finders or "default,unflattened,green-window").split(",")
    params = {k: v for k, v in finders().items() if k in chosen}
    fields = load_fields(args.every_iml, args.every_bccd)
    names = ["original", *COMBOS] if args.combos else args.transforms.split(",")
    default = "field_combos.json" if args.combos else "field_transforms.json"
    args.out = args.out or HERE / "results" / default
    res = run(fields, names, params)
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
