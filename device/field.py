"""Whole microscope fields: find every red cell, crop it like the NIH crops, classify, count.

A thin-smear field is segmented classically (no model): the background colour is estimated and
divided out (optical density); stained cells are thresholded (a fraction of Otsu) together with
the thin rims of pale cells (a local threshold); pale centres are filled; touching cells are
split on the distance transform: one seed per distance peak (plus Hough-circle centres inside
clumps too dense for peaks), each pixel going to the seed minimizing distance minus the seed's
radius, which for overlapping discs is the watershed of the distance map. Debris, platelets and
white cells are rejected by size and by nucleus-coloured stain; regions still holding several
cells' area are split by area (k-means on pixel coordinates). Each kept cell is cropped the
way the NIH crops were made: a tight box around the cell (its convex hull, grown a little to
take back the pale edge the threshold cuts off), everything outside black. Sizes are in units
of the typical cell radius, estimated per field (distance transform blended with Hough circle
radii), so the same settings work at other magnifications.

Measured on the 364 BCCD fields in benchmarks/RESULTS.md: recall about 0.82 at IoU 0.5, short
of the 0.9 target; the rest is mostly dense, heavily overlapping fields whose radius estimate is
off (over- or under-split clumps), very pale cells, and boxes misplaced in the labels.

Parasitemia is the fraction of found cells called parasitized at the manifest's cutoff (the same
call the patient rule was set with), with a Wilson 95% interval. The uncertain band only flags
single cells for a human look; it does not change the count.

Light: numpy at import, OpenCV inside functions, the classifier is injected (anything with
``.manifest`` and ``.predict``), so tests run with a fake one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgekit.errors import ImageError

if TYPE_CHECKING:
    from edgekit.manifest import Manifest


def _cv2():
    import cv2  # deferred: the CLI's --help must not pay for OpenCV

    return cv2


@dataclass(frozen=True)
class FieldParams:
    """Segmentation settings, in units of the typical cell radius so they hold at any magnification.

    Defaults were tuned on half of the BCCD fields (benchmarks/field_detection.py).
    """

    max_side: int = 1024  # segment on a copy at most this large; crops come from the full image
    bg_percentile: float = 95.0  # the brightest stained-free pixels are the background
    threshold: float = 0.65  # x Otsu's threshold on green optical density
    min_od: float = 0.05  # green optical density below which nothing is a cell (BCCD cells: 0.2-0.4)
    min_area: float = 0.30  # x typical cell area; smaller regions are debris or platelets
    min_edge_area: float = 0.50  # x typical cell area, for cells cut by the field border
    max_area: float = 3.0  # x typical cell area; larger regions are unsplit clumps
    peak_height: float = 0.50  # distance-transform peaks lower than this x radius are no cell centre
    peak_window: float = 1.0  # x radius: peaks closer than this are one cell
    nucleus_od: float = 0.20  # red-channel optical density of a stained nucleus ...
    nucleus_contrast: float = 0.12  # ... exceeding its blue optical density by this much
    min_nucleus_area: float = 0.12  # x cell area: smaller purple blobs are platelets
    reach: float = 0.5  # x radius: pixels farther than this beyond a seed's own radius are not its cell
    hough_votes: float = 20.0  # Hough accumulator threshold for extra seeds in dense clumps; 0: off
    hough_edge: float = 30.0  # Canny upper threshold of the Hough transform
    rim: float = 8.0  # local-contrast threshold (density units, cells ~200) for pale cells' rims; 0: off
    max_wbc_overlap: float = 0.2  # a region this much inside a white cell's zone is rejected
    split_area: float = 1.8  # x typical cell area: larger regions are split by area (k-means); 0: off
    grow: float = 0.12  # x radius: each cell's mask grows this much into its pale edge (cut by the threshold)
    grow_threshold: float = 0.5  # x threshold: the faint stain the growth may reach into
    hough_radius: bool = True  # blend the distance-transform radius estimate with circles' radii
    radius_gain: float = 1.1  # x the blended estimate (circle radii run a little small)
    cell_radius: float | None = None  # in full-resolution pixels; None: estimated per field


@dataclass
class CellBox:
    """One found cell, in full-resolution pixel coordinates of the field."""

    id: int
    x: int
    y: int
    w: int
    h: int
    area: int
    mask: np.ndarray  # bool (h, w): True inside the cell
    edge: bool = False  # touches the field border (a cut cell)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(xmin, ymin, xmax, ymax), exclusive max."""
        return (self.x, self.y, self.x + self.w, self.y + self.h)


class ClassifierLike(Protocol):
    manifest: Manifest

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass
class FieldReport:
    """The result for one field. ``rejected`` holds the reason when the field was not counted."""

    source: str
    shape: tuple[int, int] = (0, 0)
    cells: list[CellBox] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)  # positive-class probability per cell
    decisions: list[str] = field(default_factory=list)  # positive | negative | uncertain per cell
    positive_label: str | None = None
    cutoff: float | None = None  # p at which a cell counts as parasitized (manifest thresholds.cutoff)
    rejected: str | None = None
    cell_radius: float = 0.0
    timing: dict[str, float] = field(default_factory=dict)  # seconds: decode, segment, classify
    domain_scores: list[float | None] = field(default_factory=list)  # per cell (edgekit.device.domain)
    domain: dict[str, Any] | None = None  # the guard's verdict on this field; None without a model
    image: np.ndarray | None = field(default=None, repr=False)  # the decoded field, when asked to keep it

    @property
    def n_cells(self) -> int:
        return len(self.cells)

    def count(self, decision: str) -> int:
        return sum(d == decision for d in self.decisions)

    @property
    def n_parasitized(self) -> int:
        """Cells called parasitized at the manifest's cutoff (including uncertain ones above it)."""
        cut = 0.5 if self.cutoff is None else self.cutoff
        return sum(p >= cut for p in self.probabilities)

    @property
    def parasitemia(self) -> float | None:
        """Fraction of found cells called parasitized; None without a classifier or cells."""
        if not self.decisions or not self.cells:
            return None
        return self.n_parasitized / len(self.cells)

    @property
    def ci95(self) -> tuple[float, float] | None:
        from edgekit.metrics import wilson_interval

        if not self.decisions or not self.cells:
            return None
        return wilson_interval(self.n_parasitized, len(self.cells))

    def to_dict(self, per_cell: bool = False) -> dict[str, Any]:
        """A JSON-ready summary (one line of ``--format jsonl``)."""
        d: dict[str, Any] = {"field": self.source, "rejected": self.rejected, "cells": self.n_cells}
        if self.decisions:
            d.update(
                positive_label=self.positive_label,
                parasitized=self.n_parasitized,
                positive=self.count("positive"),
                negative=self.count("negative"),
                uncertain=self.count("uncertain"),
                parasitemia=self.parasitemia,
                ci95=list(self.ci95) if self.ci95 else None,
            )
        if self.domain is not None:
            d["domain"] = self.domain
        d["timing_ms"] = {k: round(v * 1000, 1) for k, v in self.timing.items()}
        if per_cell:
            d["cell_list"] = [
                {
                    "id": cell_id(self.source, c.id),
                    "box": list(c.box),
                    "area": c.area,
                    "edge": c.edge,
                    **(
                        {"p": round(self.probabilities[i], 4), "decision": self.decisions[i]}
                        if self.decisions
                        else {}
                    ),
                }
                for i, c in enumerate(self.cells)
            ]
        return d


def cell_id(source: str, index: int) -> str:
    """Stable id of a cell within a field, e.g. ``field.jpg#12``."""
    return f"{Path(source).name}#{index}"


# --------------------------------------------------------------------------- segmentation


def _odd(n: float) -> int:
    n = max(3, int(round(n)))
    return n if n % 2 else n + 1


def _optical_density(rgb: np.ndarray, bg_percentile: float) -> np.ndarray:
    """Per-channel optical density against the estimated background colour (colour normalization:
    the result no longer depends on lamp colour or exposure)."""
    f = rgb.astype(np.float32)
    bg = np.percentile(f.reshape(-1, 3)[:: max(1, f.shape[0] * f.shape[1] // 100_000)], bg_percentile, axis=0)
    return np.log(np.maximum(bg, 1.0) / np.maximum(f, 1.0)).clip(0.0, None)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill regions not connected to the border (the pale centres of biconcave red cells)."""
    cv2 = _cv2()
    h, w = mask.shape
    pad = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    flood = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(pad, flood, (0, 0), 255)
    return mask | np.where(pad[1:-1, 1:-1] == 0, 255, 0).astype(np.uint8)


def _density_u8(od: np.ndarray) -> tuple[np.ndarray, float]:
    """Green optical density (haemoglobin and stain absorb green) as uint8, scaled so a high
    percentile of the cells sits at 200 and the darker white-cell nuclei clip; and that scale."""
    odg = od[:, :, 1]
    scale = 200.0 / max(float(np.percentile(odg, 90)), 0.02)
    return np.clip(odg * scale, 0, 255).astype(np.uint8), scale


def _foreground(od: np.ndarray, factor: float = 1.0, min_od: float = 0.0) -> np.ndarray:
    """Stained pixels: a fraction of Otsu's threshold on the green optical density, pale centres
    filled. Clipping the nuclei makes Otsu split background from red cells, not cells from nuclei."""
    cv2 = _cv2()
    u8, scale = _density_u8(od)
    u8 = cv2.GaussianBlur(u8, (5, 5), 0)
    otsu, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # below Otsu, since pale cells and pale centres are barely darker than the background, but
    # never below a minimum density, or a cell-free field's noise becomes "cells"
    _, fg = cv2.threshold(u8, max(otsu * factor, min_od * scale), 255, cv2.THRESH_BINARY)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    return _fill_holes(fg)


def _estimate_radius(dist: np.ndarray, fg: np.ndarray) -> float:
    """Typical cell radius: the median of the blobs' distance-transform maxima (a chain of
    overlapping cells is about one cell wide, so its maximum is still about one radius). A field
    that is one dense clump overestimates it (see FieldParams.cell_radius)."""
    cv2 = _cv2()
    n, labels = cv2.connectedComponents(fg, connectivity=8)
    if n <= 1:
        return 0.0
    maxima = np.zeros(n, np.float32)
    np.maximum.at(maxima, labels.ravel(), dist.ravel())
    maxima = maxima[1:]
    maxima = maxima[maxima >= 0.4 * np.percentile(maxima, 90)]
    return float(np.median(maxima)) if maxima.size else 0.0


def _circle_radius(od: np.ndarray, fallback: float) -> float:
    """Median radius of the clearest circles in the field (Hough transform on the cells' outlines).
    Unlike the distance transform, it does not grow when a field's cells merge into clumps; blended
    with it (geometric mean), the per-field estimate scatters much less (BCCD: 5-95% range of the
    ratio to the labelled boxes' size 0.70-1.23 alone, 0.70-0.95 blended)."""
    cv2 = _cv2()
    u8 = cv2.GaussianBlur(_density_u8(od)[0], (0, 0), 2)
    m = min(u8.shape)
    circles = cv2.HoughCircles(u8, cv2.HOUGH_GRADIENT_ALT, dp=1.5, minDist=m / 20, param1=80, param2=0.6,
                               minRadius=int(m / 30), maxRadius=int(m / 4))
    if circles is None or len(circles[0]) < 3:
        return fallback
    return float(np.median(circles[0][:, 2]))


def _nucleus_pixels(od: np.ndarray, p: FieldParams) -> np.ndarray:
    """Purple (nucleus-stained) pixels: they absorb red much more than blue; red cells do not."""
    cv2 = _cv2()
    nuc = ((od[:, :, 0] > p.nucleus_od) & (od[:, :, 0] - od[:, :, 2] > p.nucleus_contrast)).astype(np.uint8)
    return cv2.morphologyEx(nuc, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))


def _nucleus_zone(nuc: np.ndarray, radius: float, p: FieldParams) -> np.ndarray:
    """Where white cells are: large nucleus-stained blobs, grown by half a radius."""
    cv2 = _cv2()
    n, labels, stats, _ = cv2.connectedComponentsWithStats(nuc, connectivity=8)
    big = np.zeros(n, bool)
    big[1:] = stats[1:, cv2.CC_STAT_AREA] >= p.min_nucleus_area * math.pi * radius * radius
    zone = big[labels].astype(np.uint8)
    if zone.any():
        zone = cv2.dilate(zone, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(radius),) * 2))
    return zone.astype(bool)


def _circle_seeds(
    od: np.ndarray, fg: np.ndarray, dist: np.ndarray, radius: float, p: FieldParams,
    taken: list[tuple[int, int]],
) -> list[tuple[int, int, float]]:
    """Extra seeds inside clumps too dense for distance peaks: centres of cell-sized circles
    (Hough transform on the cells' outlines) that lie on the foreground, away from other seeds."""
    cv2 = _cv2()
    u8 = cv2.GaussianBlur(_density_u8(od)[0], (0, 0), 2)
    circles = cv2.HoughCircles(
        u8, cv2.HOUGH_GRADIENT, dp=1, minDist=p.peak_window * radius, param1=p.hough_edge,
        param2=p.hough_votes, minRadius=int(0.75 * radius), maxRadius=int(1.4 * radius),
    )
    if circles is None:
        return []
    h, w = fg.shape
    pts = np.array(taken, np.float32).reshape(-1, 2)
    out: list[tuple[int, int, float]] = []
    for x, y, _ in circles[0]:
        iy, ix = min(h - 1, int(y)), min(w - 1, int(x))
        if not fg[iy, ix] or dist[iy, ix] < p.peak_height * radius:
            continue
        if len(pts) and float(np.min(np.hypot(pts[:, 0] - iy, pts[:, 1] - ix))) < p.peak_window * radius:
            continue
        out.append((iy, ix, float(dist[iy, ix])))
        pts = np.vstack([pts, [[iy, ix]]])
    return out


def _split_touching(
    od: np.ndarray, fg: np.ndarray, dist: np.ndarray, radius: float, p: FieldParams
) -> tuple[np.ndarray, int]:
    """Split touching cells: one seed per distance-transform peak, then every foreground pixel goes
    to the seed of its blob minimizing (distance to seed - seed's own radius). For overlapping
    discs this is the watershed of the distance transform (the cut runs through the waist between
    two cells) without a flooding loop; OpenCV's watershed floods by colour difference between
    neighbours, which a smooth distance map does not have."""
    cv2 = _cv2()
    win = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(p.peak_window * radius),) * 2)
    peaks = (dist >= cv2.dilate(dist, win) - 1e-3) & (dist > p.peak_height * radius)
    # plateaus and near-ties give several nearby peak pixels: merge those within a small window
    merge = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(radius * 0.3),) * 2)
    peaks = cv2.dilate(peaks.astype(np.uint8), merge) & (fg > 0).astype(np.uint8)
    n, seeds, stats, _ = cv2.connectedComponentsWithStats(peaks, connectivity=8)
    n_blobs, blobs = cv2.connectedComponents(fg, connectivity=8)
    h, w = fg.shape
    # each seed sits on its highest distance pixel (a merged seed's centroid may fall outside)
    found = []
    for k in range(1, n):
        x, y, sw, sh = stats[k, :4]
        sub = np.where(seeds[y : y + sh, x : x + sw] == k, dist[y : y + sh, x : x + sw], -1.0)
        iy, ix = np.unravel_index(int(sub.argmax()), sub.shape)
        found.append((y + iy, x + ix, float(sub[iy, ix])))
    if p.hough_votes > 0:
        found += _circle_seeds(od, fg, dist, radius, p, [(y, x) for y, x, _ in found])
    per_blob = np.bincount([blobs[cy, cx] for cy, cx, _ in found], minlength=n_blobs)
    labels = np.zeros((h, w), np.int32)
    best = np.full((h, w), np.inf, np.float32)
    reach = p.reach * radius
    for k, (cy, cx, r_k) in enumerate(found, start=1):
        blob = blobs[cy, cx]
        if per_blob[blob] == 1:  # a lone cell keeps its whole blob, whatever its shape
            labels[blobs == blob] = k
            continue
        y0, y1 = max(0, int(cy - r_k - reach)), min(h, int(cy + r_k + reach) + 1)
        x0, x1 = max(0, int(cx - r_k - reach)), min(w, int(cx + r_k + reach) + 1)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        score = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2, dtype=np.float32) - r_k
        take = (blobs[y0:y1, x0:x1] == blob) & (score < best[y0:y1, x0:x1]) & (score < reach)
        best[y0:y1, x0:x1][take] = score[take]
        labels[y0:y1, x0:x1][take] = k
    return labels, len(found)


def _kmeans_split(
    ys: np.ndarray, xs: np.ndarray, k: int, iters: int = 10
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split one region's pixels into k compact parts (k-means on pixel coordinates, deterministic
    farthest-point start)."""
    if k <= 1:
        return [(ys, xs)]
    pts = np.stack([ys, xs], axis=1).astype(np.float32)
    sample = pts[:: max(1, len(pts) // 2000)]
    centres = [sample.mean(axis=0)]
    for _ in range(k):  # first pick replaced: start from the point farthest from the mean
        d = np.min([np.sum((sample - c) ** 2, axis=1) for c in centres], axis=0)
        centres.append(sample[int(d.argmax())])
    c = np.array(centres[1:], np.float32)
    for _ in range(iters):
        near = np.argmin(((sample[:, None, :] - c[None]) ** 2).sum(axis=2), axis=1)
        c = np.array([sample[near == j].mean(axis=0) if (near == j).any() else c[j] for j in range(k)])
    near = np.argmin(((pts[:, None, :] - c[None]) ** 2).sum(axis=2), axis=1)
    return [(ys[near == j], xs[near == j]) for j in range(k) if (near == j).any()]


def find_cells(rgb: np.ndarray, params: FieldParams | None = None) -> list[CellBox]:
    """Find the red blood cells of a field; boxes and masks are in full-resolution pixels."""
    return _segment(rgb, params or FieldParams())[0]


def _segment(rgb: np.ndarray, p: FieldParams) -> tuple[list[CellBox], float]:
    cv2 = _cv2()
    H, W = rgb.shape[:2]
    scale = min(1.0, p.max_side / max(H, W))
    work = rgb
    if scale < 1.0:
        work = cv2.resize(rgb, (round(W * scale), round(H * scale)), interpolation=cv2.INTER_AREA)
    od = _optical_density(work, p.bg_percentile)
    fg = _foreground(od, p.threshold, p.min_od)
    dist = cv2.distanceTransform(fg, cv2.DIST_L2, 5)
    nuc = _nucleus_pixels(od, p)
    radius = p.cell_radius * scale if p.cell_radius else _estimate_radius(dist, fg)
    if not p.cell_radius and p.hough_radius and radius >= 3:
        radius = math.sqrt(radius * _circle_radius(od, radius)) * p.radius_gain
    if radius < 3:
        return [], 0.0
    if p.rim > 0:
        # pale "ghost" cells show only a thin darker rim: a local threshold finds the rim, and
        # filling it makes the cell whole
        u8, dscale = _density_u8(od)
        u8 = cv2.GaussianBlur(u8, (3, 3), 0)
        local = cv2.blur(u8, (_odd(radius),) * 2)
        rim = ((u8.astype(np.int16) - local > p.rim) & (u8 >= p.min_od * dscale)).astype(np.uint8) * 255
        rim = cv2.morphologyEx(rim, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
        fg = _fill_holes(fg | rim)
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
        dist = cv2.distanceTransform(fg, cv2.DIST_L2, 5)
    markers, n = _split_touching(od, fg, dist, radius, p)
    # growth only reaches into faintly stained pixels (a cell's pale edge), never into background
    edge_fg = _foreground(od, p.threshold * p.grow_threshold, p.min_od) > 0 if p.grow > 0 else None
    zone = _nucleus_zone(nuc, radius, p)
    cell_area = math.pi * radius * radius
    h, w = fg.shape
    flat = markers.ravel()
    order = np.argsort(flat, kind="stable")
    ends = np.cumsum(np.bincount(flat, minlength=n + 1))
    regions = [np.divmod(order[ends[k - 1] : ends[k]], w) for k in range(1, n + 1)]
    single = [ys.size for ys, _ in regions if 0.5 * cell_area <= ys.size <= 1.5 * cell_area]
    typical = float(np.median(single)) if len(single) >= 3 else cell_area
    pieces = []
    for ys, xs in regions:
        if p.split_area > 0 and ys.size > p.split_area * typical:
            # a clump the seeds did not split: as many cells as its area holds, nearest-centre split
            pieces += _kmeans_split(ys, xs, int(round(ys.size / typical)))
        elif ys.size:
            pieces.append((ys, xs))
    cells: list[CellBox] = []
    for ys, xs in pieces:
        area = ys.size
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        edge = x0 == 0 or y0 == 0 or x1 == w or y1 == h
        if area < (p.min_edge_area if edge else p.min_area) * cell_area or area > p.max_area * cell_area:
            continue
        if zone[ys, xs].mean() > p.max_wbc_overlap:
            continue
        if p.grow > 0:
            g = int(round(p.grow * radius))
            y0, y1, x0, x1 = max(0, y0 - g), min(h, y1 + g), max(0, x0 - g), min(w, x1 + g)
        local = np.zeros((y1 - y0, x1 - x0), np.uint8)
        local[ys - y0, xs - x0] = 1
        # the crop mask is the region's convex hull: a pale centre open to one side (a "C") and the
        # straight cut between two overlapping cells both belong to the cell, as in the NIH masks
        hull = cv2.convexHull(cv2.findNonZero(local))
        local = cv2.fillConvexPoly(np.zeros_like(local), hull, 1)
        if edge_fg is not None:
            grown = cv2.dilate(local, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * g + 1,) * 2))
            local |= grown & edge_fg[y0:y1, x0:x1]
            ly, lx = np.nonzero(local)
            local = local[ly.min() : ly.max() + 1, lx.min() : lx.max() + 1]
            y0, x0 = y0 + ly.min(), x0 + lx.min()
            y1, x1 = y0 + local.shape[0], x0 + local.shape[1]
        if scale != 1.0:
            fx0, fy0 = int(x0 / scale), int(y0 / scale)
            fx1, fy1 = min(W, int(math.ceil(x1 / scale))), min(H, int(math.ceil(y1 / scale)))
            local = cv2.resize(local, (fx1 - fx0, fy1 - fy0), interpolation=cv2.INTER_NEAREST)
            x0, y0, x1, y1 = fx0, fy0, fx1, fy1
        mask = local.astype(bool)
        box = (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
        cells.append(CellBox(len(cells), *box, area=int(mask.sum()), mask=mask, edge=bool(edge)))
    return cells, radius / scale


def crop_cell(rgb: np.ndarray, cell: CellBox) -> np.ndarray:
    """The cell as NIH cropped it: its tight bounding box, everything outside its mask black."""
    crop = rgb[cell.y : cell.y + cell.h, cell.x : cell.x + cell.w].copy()
    crop[~cell.mask] = 0
    return crop


# --------------------------------------------------------------------------- quality


MIN_SIDE = 64
MAX_RADIUS_FRACTION = 4  # a typical "cell" wider than a quarter of the field's short side is a pile
MIN_SHARPNESS = 0.15  # Laplacian var per grey std, 640 px wide: BCCD >= 0.28, blurred (sigma 2) <= 0.10


def field_quality(rgb: np.ndarray) -> str | None:
    """The reason this field cannot be counted (blank, overexposed, dark, out of focus), or None."""
    cv2 = _cv2()
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        return f"image too small for a microscope field ({w}x{h})"
    small = rgb if max(h, w) <= 1024 else cv2.resize(rgb, None, fx=1024 / max(h, w), fy=1024 / max(h, w),
                                                     interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    if (small.min(axis=2) >= 250).mean() > 0.5:
        return "overexposed (more than half the field is saturated white)"
    if float(gray.mean()) < 40:
        return "too dark (underexposed or no light)"
    if float(gray.std()) < 3:
        return "blank field (no contrast)"
    if _sharpness(gray, small.shape[1]) < MIN_SHARPNESS:
        return "out of focus"
    return None


def _sharpness(gray: np.ndarray, width: int) -> float:
    """Focus measure: variance of the Laplacian at a 640-px-wide scale, per unit of contrast
    (so a pale, low-contrast but sharp smear is not mistaken for a blurred one)."""
    cv2 = _cv2()
    g = gray
    if width != 640:
        g = cv2.resize(gray, None, fx=640 / width, fy=640 / width, interpolation=cv2.INTER_AREA)
    g = g.astype(np.float32)
    lap = cv2.Laplacian(g, cv2.CV_32F).var()
    return float(lap) / max(float(g.std()), 1.0)


def count_cells(
    rgb: np.ndarray, params: FieldParams | None = None
) -> tuple[list[CellBox], float, str | None]:
    """Quality check, then :func:`find_cells`: (cells, typical radius in pixels, reason or None).
    A reason means the field is not to be counted, and the cell list is then empty."""
    reason = field_quality(rgb)
    if reason:
        return [], 0.0, reason
    cells, radius = _segment(rgb, params or FieldParams())
    if radius > min(rgb.shape[:2]) / MAX_RADIUS_FRACTION:
        # the "cells" are one mass wider than a quarter of the field: cells are piled up
        return [], radius, "cells overlap into one mass (a thick part of the smear); move to a thinner area"
    if not cells:
        return [], radius, "no red cells found"
    return cells, radius, None


# --------------------------------------------------------------------------- classification


def _positive_index(manifest: Manifest) -> int:
    idx = manifest.positive_index
    return len(manifest.labels) - 1 if idx is None else idx


def classify_crops(crops: list[np.ndarray], classifier: ClassifierLike, batch_size: int = 64) -> list[float]:
    """Positive-class probability of each crop, resized with the bundle's own preprocessing."""
    from edgekit.device.preprocess import prepare

    pre = classifier.manifest.preprocessing
    pos = _positive_index(classifier.manifest)
    out: list[float] = []
    for start in range(0, len(crops), batch_size):
        batch = np.stack([prepare(c, pre) for c in crops[start : start + batch_size]])
        probs = np.asarray(classifier.predict(batch), dtype=np.float32)
        out.extend(float(v) for v in probs[:, pos])
    return out


def _load(path_or_rgb: str | os.PathLike | np.ndarray) -> tuple[str, np.ndarray]:
    from edgekit.device.preprocess import read_image

    if isinstance(path_or_rgb, np.ndarray):
        rgb = path_or_rgb
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ImageError(f"expected an RGB uint8 (H, W, 3) array, got {rgb.dtype} {rgb.shape}")
        return "<array>", rgb
    return str(path_or_rgb), read_image(path_or_rgb)


def analyze_field(
    path_or_rgb: str | os.PathLike | np.ndarray,
    classifier: ClassifierLike | None = None,
    batch_size: int = 64,
    params: FieldParams | None = None,
    keep_image: bool = False,
) -> FieldReport:
    """Find, crop and (with a classifier) classify every red cell of one field.

    Never raises for bad input: unreadable images, unusable fields and fields without cells come
    back with ``rejected`` set to the reason, so a batch carries on.
    """
    p = params or FieldParams()
    source = "<array>" if isinstance(path_or_rgb, np.ndarray) else str(path_or_rgb)
    report = FieldReport(source=source)
    if classifier is not None:
        m = classifier.manifest
        report.positive_label = m.positive_label or m.labels[-1]
    t0 = time.perf_counter()
    try:
        source, rgb = _load(path_or_rgb)
    except ImageError as exc:
        report.rejected = str(exc)
        return report
    report.shape = (int(rgb.shape[0]), int(rgb.shape[1]))
    t1 = time.perf_counter()
    report.timing["decode"] = t1 - t0
    report.cells, report.cell_radius, reason = count_cells(rgb, p)
    t2 = time.perf_counter()
    report.timing["segment"] = t2 - t1
    if reason is not None:
        report.rejected = reason
        report.cells = []
    elif classifier is not None:
        crops = [crop_cell(rgb, c) for c in report.cells]
        report.probabilities = classify_crops(crops, classifier, batch_size)
        th = classifier.manifest.thresholds
        report.decisions = [th.decide(pr) for pr in report.probabilities]
        report.cutoff = th.cutoff
        report.timing["classify"] = time.perf_counter() - t2
    if classifier is not None:
        from edgekit.device.domain import cell_scores, field_verdict

        dom = classifier.manifest.domain
        report.domain_scores = cell_scores(crops, dom) if reason is None and dom is not None else []
        report.domain = field_verdict(report.domain_scores, dom)
    if keep_image:
        report.image = rgb
    return report


def iter_field_crops(
    path: str | os.PathLike, params: FieldParams | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``("field.jpg#12", crop)`` for every red cell of one field, for screening sessions.

    Raises :class:`ImageError` (before yielding anything) when the field is unreadable or
    unusable, with the reason, so the caller records it as rejected.
    """
    from edgekit.device.preprocess import read_image

    rgb = read_image(path)
    cells, _, reason = count_cells(rgb, params)
    if reason:
        raise ImageError(f"{Path(path).name}: {reason}")
    for c in cells:
        yield cell_id(str(path), c.id), crop_cell(rgb, c)


# --------------------------------------------------------------------------- overlay

COLORS = {
    "parasitized": (230, 30, 30),  # counted in the parasitemia (p >= the manifest's cutoff)
    "not parasitized": (30, 170, 60),
    None: (0, 150, 255),  # found, not classified
}


def draw_overlay(rgb: np.ndarray, report: FieldReport) -> np.ndarray:
    """A copy of the field with each cell's outline and box coloured as counted (red: parasitized,
    green: not), uncertain cells' numbers marked "?", and a header line with the counts, for a
    health worker to check the machine's work."""
    cv2 = _cv2()
    out = rgb.copy()
    thick = max(1, round(max(out.shape[:2]) / 640))
    cut = 0.5 if report.cutoff is None else report.cutoff
    for i, c in enumerate(report.cells):
        key = None
        if report.decisions:
            key = "parasitized" if report.probabilities[i] >= cut else "not parasitized"
        color = COLORS[key]
        contours, _ = cv2.findContours(c.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, color, thick, offset=(c.x, c.y))
        cv2.rectangle(out, (c.x, c.y), (c.x + c.w - 1, c.y + c.h - 1), color, thick)
        org = (c.x + 3, c.y + 12 * thick)
        unsure = "?" if report.decisions and report.decisions[i] == "uncertain" else ""
        cv2.putText(out, f"{c.id}{unsure}", org, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, color, thick)
    if report.domain is not None and not report.domain["ok"] and not report.rejected:
        text = "NOT VALIDATED FOR THIS MICROSCOPE: cells unlike the model's training cells"
        (_, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thick, thick)
        y0 = out.shape[0] - th - base - 8
        cv2.rectangle(out, (0, y0), (out.shape[1] - 1, out.shape[0] - 1), (160, 0, 0), -1)
        cv2.putText(out, text, (4, out.shape[0] - base - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thick,
                    (255, 255, 255), thick, cv2.LINE_AA)
    if report.rejected:
        text = f"REJECTED: {report.rejected}"
    elif report.decisions:
        lo, hi = report.ci95 or (0.0, 0.0)
        text = (
            f"{report.n_cells} cells, {report.n_parasitized} {report.positive_label}"
            f" ({report.count('uncertain')} uncertain: ?); parasitemia {100 * (report.parasitemia or 0):.1f}%"
            f" (95% CI {100 * lo:.1f}-{100 * hi:.1f}%)"
        )
    else:
        text = f"{report.n_cells} cells (not classified)"
    scale = 0.5 * thick
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    cv2.rectangle(out, (0, 0), (min(out.shape[1] - 1, tw + 8), th + base + 8), (0, 0, 0), -1)
    cv2.putText(out, text, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out
