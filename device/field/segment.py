# pyright: basic
"""Classical segmentation of a thin-smear field into red cells (no model); see the package docstring."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from edgekit.device.field.illumination import flatten, lighting
from edgekit.device.field.resample import resize_exact
from edgekit.device.field.types import CellBox, FieldParams
from edgekit.device.order import median, percentile
from edgekit.device.preprocess import opencv

MAX_RADIUS_FRACTION = 4  # a typical "cell" wider than a quarter of the field's short side is a pile
# optical density: the faintest stain that is cells (a field whose densest tenth is fainter is not stretched
# to look stained, and no field's floor goes under it: a blank field's lamp gradient is no cell)
FAINTEST = 0.02


def distance_map(mask: np.ndarray, size: int = 5) -> np.ndarray:
    """Each non-zero pixel's distance to the nearest zero one (float32), OpenCV's ``DIST_L2`` with a
    ``size`` x ``size`` mask, computed by OpenCV's own fixed-point code (steps of 2**-16 px) on every
    CPU: on x86 it hands this to Intel IPP, whose float result differs in the last bits from the
    arm64 build's, and the cell masks followed (a Pi drew other cells than the workstation). IPP is
    switched off for this call only, on this thread (OpenCV keeps the switch per thread)."""
    cv2 = opencv()
    ipp = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    try:
        return cv2.distanceTransform(mask, cv2.DIST_L2, size)
    finally:
        cv2.ipp.setUseIPP(ipp)


def _odd(n: float) -> int:
    n = max(3, int(round(n)))
    return n if n % 2 else n + 1


def background_colour(rgb: np.ndarray, p: FieldParams) -> np.ndarray:
    """The background colour (float32 RGB). ``background="mode"``: the brightest mode of the
    field's grey levels (the clear glass between cells, whatever its colour or brightness; a few
    glare pixels are too few to be a mode), the bright side of its pixels' colours. Otherwise each
    channel's ``bg_percentile``."""
    step = max(1, rgb.shape[0] * rgb.shape[1] // 100_000)
    px = rgb.reshape(-1, 3)[::step]
    if p.background != "mode":
        return percentile(px.astype(np.float32), p.bg_percentile, axis=0).astype(np.float32)
    grey = px.astype(np.int32).sum(axis=1) // 3
    hist = np.convolve(np.bincount(grey, minlength=256).astype(np.float64), np.ones(9) / 9, mode="same")
    # the brightest local maximum holding at least a fifth of the highest peak's pixels
    peaks = _modes(hist)
    level = int(peaks.max()) if peaks.size else int(percentile(grey, p.bg_percentile))
    # the bright side of that mode (vignetting and noise spread it): its pixels' bg_percentile
    near = px[np.abs(grey - level) <= p.bg_spread]
    if not len(near):
        return px.max(axis=0).astype(np.float32)
    return percentile(near.astype(np.float32), p.bg_percentile, axis=0).astype(np.float32)


def _optical_density(rgb: np.ndarray, p: FieldParams) -> np.ndarray:
    """Per-channel optical density against the estimated background colour (colour normalization:
    the result no longer depends on lamp colour or exposure). Pixels brighter than the background
    are 0, or negative when ``density="stain"`` (a stain may leave one channel brighter)."""
    bg = background_colour(rgb, p)
    # a 256-entry table per channel (the same float32 arithmetic, once per grey level, not per pixel)
    levels = np.maximum(np.arange(256, dtype=np.float32), 1.0)[:, None]
    # the log in float64, rounded once to float32: numpy's float32 log is vectorised differently
    # on x86 and arm64 and differs there in the last bit, float64 rounded to float32 does not
    lut = np.log((np.maximum(bg, 1.0).astype(np.float32) / levels).astype(np.float64)).astype(np.float32)
    if p.density != "stain":
        lut = lut.clip(0.0, None)
    return opencv().LUT(np.ascontiguousarray(rgb), np.ascontiguousarray(lut.reshape(256, 1, 3)))


def _stain_direction(
    od: np.ndarray, power: float = 2.0, floor: float = 0.0, otsu: bool = False,
    inside: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The field's own stain colour in optical density: the median density of its stained pixels
    (total density between its 70th and 97th percentile: the cells, not the background nor the few
    darkest nuclei; never below ``floor`` x the 97th, nor with ``otsu`` below Otsu's threshold
    between background and stain). Returns the channel weights of the field's density (each channel
    weighted by its own density to ``power``, summing to 1) and the colour as a unit vector. ``inside``:
    the pixels within the field of view (:mod:`.view`; None: all)."""
    px = od.reshape(-1, 3) if inside is None else od[inside]
    px = px[:: max(1, len(px) // 50_000)]
    s = px.sum(axis=1)
    lo, top, hi = percentile(s, [70, 90, 97])
    # a field with few cells: its 70th percentile is background, whose noise has no stain colour
    if floor > 0:
        lo = max(float(lo), floor * float(hi))
    if otsu and top > 0:
        # clipped at the 90th percentile: a large white cell's nucleus cannot be Otsu's upper class
        cv2 = opencv()
        u8 = np.clip(s * (255.0 / float(top)), 0, 255).astype(np.uint8).reshape(-1, 1)
        level = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0]
        lo = max(float(lo), level * float(top) / 255.0)
    v = median(px[(s >= lo) & (s <= hi)] if hi > lo else px, axis=0)
    # the norm in float64 from its three squares (exact), not a BLAS dot: the same bits on every CPU
    wide = v.astype(np.float64)
    colour = wide / max(math.sqrt(float(wide[0] ** 2 + wide[1] ** 2 + wide[2] ** 2)), 1e-6)
    # raised to a power: the channels the stain absorbs most carry the contrast, the others mostly noise
    v = np.clip(v, 0.0, None) ** power
    # weights summing to 1: a weighted mean of the channels' densities, in the units of one channel
    n = float(v.sum())
    weights = v / n if n > 1e-6 else np.full(3, 1 / 3)
    return weights.astype(np.float32), colour.astype(np.float32)


_ON, _OFF = np.uint8(255), np.uint8(0)  # a mask's values for OpenCV


def _fill_holes(
    mask: np.ndarray, density: np.ndarray | None = None, min_density: float = 0.0,
    max_area: float = 0.0, min_solidity: float = 0.0,
) -> np.ndarray:
    """Fill regions not connected to the border (the pale centres of biconcave red cells). With
    ``density``, only holes that look like a centre: stained on average at least ``min_density``
    (the membrane lies above and below a centre), or no larger than ``max_area`` pixels and convex
    (solidity >= ``min_solidity``; a very pale centre is a round hole in one cell). Background
    enclosed by a ring of touching cells is clear and concave (arcs of several cells): it stays a
    gap, or the ring would become one solid mass."""
    cv2 = opencv()
    h, w = mask.shape
    pad = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    flood = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(pad, flood, (0, 0), 255)
    holes = np.where(pad[1:-1, 1:-1] == 0, _ON, _OFF)  # uint8 at once: no 8-byte-a-pixel temporary
    if density is not None and holes.any():
        n, labels, stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=4)
        area = stats[:, cv2.CC_STAT_AREA]
        # sums over the holes' pixels only (label 0, the rest, is never kept): sums of whole numbers,
        # exact in float64 in any order, without a float64 copy of the whole field
        inside = np.flatnonzero(labels)
        mean = np.bincount(labels.ravel()[inside], density.ravel()[inside].astype(np.float64), minlength=n)
        mean /= np.maximum(area, 1)
        keep = mean >= min_density
        for k in np.nonzero(~keep & (area <= max_area))[0]:
            if k == 0:
                continue
            x, y, bw, bh = stats[k, :4]
            contours, _ = cv2.findContours((labels[y : y + bh, x : x + bw] == k).astype(np.uint8),
                                           cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            hull = cv2.contourArea(cv2.convexHull(np.concatenate(contours)))
            keep[k] = hull > 0 and area[k] >= min_solidity * hull
        keep[0] = False
        holes = np.where(keep[labels], _ON, _OFF)  # cv2 stub: labels may be float # pyright: ignore[reportCallIssue, reportArgumentType]
    return mask | holes


def _density_u8(od: np.ndarray, direction: np.ndarray | None = None,
                inside: np.ndarray | None = None) -> tuple[np.ndarray, float, np.ndarray]:
    """Optical density along the field's stain direction (``direction``; None: the green channel,
    which haemoglobin and pink Giemsa absorb) as uint8, scaled so a high percentile of the cells
    sits at 200 and the darker white-cell nuclei clip; that scale; and the density itself."""
    odg = od[:, :, 1] if direction is None else opencv().transform(od, direction.reshape(1, 3))
    scale = 200.0 / max(float(percentile(odg if inside is None else odg[inside], 90)), FAINTEST)
    return np.clip(odg * scale, 0, 255).astype(np.uint8), scale, odg


@dataclass
class _Density:
    """A field's density (:func:`_density_u8`) and the smoothed copies the steps share, each
    computed once per field."""

    u8: np.ndarray
    scale: float
    along: np.ndarray  # float32 density along the stain direction (the green channel's without)
    direction: np.ndarray | None = None  # the channel weights of the density (None: green)
    colour: np.ndarray | None = None  # the cells' colour in optical density, a unit vector
    inside: np.ndarray | None = None  # the pixels within the field of view (None: all)

    @classmethod
    def of(cls, od: np.ndarray, direction: np.ndarray | None = None,
           colour: np.ndarray | None = None, inside: np.ndarray | None = None) -> _Density:
        return cls(*_density_u8(od, direction, inside), direction, colour, inside)

    @cached_property
    def blur5(self) -> np.ndarray:
        return opencv().GaussianBlur(self.u8, (5, 5), 0)

    @cached_property
    def otsu(self) -> float:
        cv2 = opencv()
        px = self.blur5 if self.inside is None else self.blur5[self.inside].reshape(-1, 1)
        return float(cv2.threshold(px, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0])

    @cached_property
    def blur2(self) -> np.ndarray:
        return opencv().GaussianBlur(self.u8, (0, 0), 2)

    @cached_property
    def background(self) -> tuple[float, float]:
        """The background's density and its noise (standard deviation), in the units of
        :attr:`blur5` but unclipped: the lowest mode of the blurred density (the clear glass; on a
        crowded field the cells are a mode of their own, denser) and the spread of the pixels below
        it, where no stain adds density (a robust half-normal estimate)."""
        b = opencv().GaussianBlur(self.along * np.float32(self.scale), (5, 5), 0)
        px = (b if self.inside is None else np.where(self.inside, b, np.nan))[::2, ::2].ravel()
        px = px[np.isfinite(px)]
        lo = float(np.floor(px.min())) if px.size else 0.0
        hist = np.bincount(np.clip(px - lo, 0, 511).astype(np.int64), minlength=3).astype(np.float64)
        hist = np.convolve(hist, np.ones(5) / 5, mode="same")
        level = lo + _lowest_mode(hist)
        below = level - px[px < level]
        return level, 1.4826 * float(median(below)) if below.size else 0.0


@dataclass(frozen=True)
class _Holes:
    """Which enclosed holes of the foreground are filled (see :func:`_fill_holes`); the default
    fills every hole."""

    min_density: float = 0.0  # x the foreground threshold; 0: every hole
    max_area: float = 0.0  # pixels: pale convex holes up to this size are filled too
    min_solidity: float = 0.0

    def fill(self, mask: np.ndarray, d: _Density, threshold: float) -> np.ndarray:
        if self.min_density <= 0:
            return _fill_holes(mask)
        return _fill_holes(mask, d.blur5, self.min_density * threshold, self.max_area, self.min_solidity)


def _modes(hist: np.ndarray, share: float = 0.2) -> np.ndarray:
    """The bins of ``hist`` that are local maxima holding at least ``share`` of its highest, ascending."""
    padded = np.concatenate([[-1.0], hist, [-1.0]])
    return np.nonzero((hist >= padded[:-2]) & (hist >= padded[2:]) & (hist >= share * hist.max()))[0]


def _lowest_mode(hist: np.ndarray, share: float = 0.2) -> int:
    """The lowest of ``hist``'s :func:`_modes` (its highest bin when it has none)."""
    peaks = _modes(hist, share)
    return int(peaks.min()) if peaks.size else int(hist.argmax())


def _floor(d: _Density, p: FieldParams) -> float:
    """The least density a stained pixel has (units of :attr:`_Density.blur5`): ``p.min_od``; on a
    pale field (that floor at ``p.pale_floor`` x the foreground threshold or more: its stain is
    hardly denser than the floor), with ``p.noise_floor``, its background plus that many times its
    noise (never under :data:`FAINTEST`) where that is less, and the threshold stands clear above
    it. A pale stain (faded, or a whitened background) puts whole cells' edges, rims and pale parts
    under a fixed density, while its background noise is as low as any field's; on a cell-free
    field, noise or a lamp's gradient, nothing stands clear of the noise: the fixed floor holds."""
    floor = p.min_od * d.scale
    threshold = d.otsu * p.threshold
    if p.noise_floor <= 0 or floor < p.pale_floor * threshold:
        return floor
    level, noise = d.background
    quiet = max(FAINTEST * d.scale, level + p.noise_floor * noise)
    return quiet if quiet < min(floor, threshold) else floor


def _threshold(d: _Density, factor: float, floor: float) -> float:
    """The foreground threshold on the blurred density: a fraction of Otsu's, never below the
    field's floor (:func:`_floor`), or a cell-free field's noise becomes "cells"."""
    return max(d.otsu * factor, floor)


def _foreground(
    d: _Density, factor: float = 1.0, floor: float = 0.0, holes: _Holes = _Holes()
) -> np.ndarray:
    """Stained pixels: a fraction of Otsu's threshold on the green optical density, pale centres
    filled. Clipping the nuclei makes Otsu split background from red cells, not cells from nuclei."""
    cv2 = opencv()
    fg, thr = _thresholded(d, factor, floor)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    return holes.fill(fg, d, thr)


def _thresholded(d: _Density, factor: float, floor: float) -> tuple[np.ndarray, float]:
    """(pixels over the foreground threshold, as 0/255; the threshold)."""
    # below Otsu, since pale cells and pale centres are barely darker than the background
    thr = _threshold(d, factor, floor)
    cv2 = opencv()
    return cv2.threshold(d.blur5, thr, 255, cv2.THRESH_BINARY)[1], thr


def _estimate_radius(dist: np.ndarray, fg: np.ndarray, window: float = 0.0) -> float:
    """Typical cell radius from the distance transform.

    With ``window`` (a first guess of the radius, from the circles): the median of the distance
    map's local maxima at least about that far apart. Every cell of a clump of touching cells
    keeps its own maximum at about its radius, so the estimate holds on fields whose cells all
    touch. Blended with the circles (every 2nd IML field, every 4th BCCD field), the 2-98% range
    of the ratio to the labelled boxes' size is 0.93-1.12 on IML and 0.71-1.06 on BCCD, against
    0.93-1.94 and 0.75-1.18 with one maximum per blob.

    Without: the median of the blobs' maxima (a chain of overlapping cells is about one cell wide,
    so its maximum is still about one radius; one dense clump overestimates it)."""
    cv2 = opencv()
    if window > 0:
        win = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(window),) * 2)
        maxima = dist[(dist >= cv2.dilate(dist, win) - 1e-3) & (dist > 1.0)]
    else:
        n, labels = cv2.connectedComponents(fg, connectivity=8)
        if n <= 1:
            return 0.0
        maxima = np.zeros(n, np.float32)
        np.maximum.at(maxima, labels.ravel(), dist.ravel())  # cv2 stub: labels may be float # pyright: ignore[reportArgumentType]
        maxima = maxima[1:]
    if not maxima.size:
        return 0.0
    maxima = maxima[maxima >= 0.4 * percentile(maxima, 90)]
    return float(median(maxima)) if maxima.size else 0.0


CIRCLE_FLOOR = 30  # the circles sizing a field's cells: radius at least its short side / this


def _circle_radii(d: _Density, floor: float, ceiling: float = 4) -> np.ndarray:
    """Radii of the clearest circles in the field, its short side / ``floor`` to / ``ceiling``
    (Hough transform on the cells' outlines), only whole circles within the field of view."""
    cv2 = opencv()
    u8 = d.blur2
    m = min(u8.shape)
    circles = cv2.HoughCircles(u8, cv2.HOUGH_GRADIENT_ALT, dp=1.5, minDist=m / 20, param1=80, param2=0.6,
                               minRadius=int(m / floor), maxRadius=int(m / ceiling))
    if circles is None:
        return np.zeros(0, np.float32)
    c = circles[0]
    if d.inside is not None:
        room = distance_map(d.inside.astype(np.uint8), 3)
        ys = np.clip(c[:, 1].astype(int), 0, room.shape[0] - 1)
        xs = np.clip(c[:, 0].astype(int), 0, room.shape[1] - 1)
        c = c[room[ys, xs] >= c[:, 2]]
    return c[:, 2]


def _spread(radii: np.ndarray) -> float:
    """Interquartile range / median of circle radii; inf under 10 circles (too few to agree)."""
    if len(radii) < 10:
        return math.inf
    q1, mid, q3 = percentile(radii, [25, 50, 75])
    return float((q3 - q1) / max(mid, 1e-6))


def _circle_radius(d: _Density, fallback: float, p: FieldParams | None = None) -> tuple[float, float]:
    """Median radius of the clearest circles in the field (:func:`_circle_radii`), and their spread
    (:func:`_spread`; a few circles in the gaps between cells can agree). Unlike the
    distance transform, it does not grow when a field's cells merge into clumps; blended with it
    (geometric mean), the per-field estimate scatters much less (BCCD: 5-95% range of the ratio to
    the labelled boxes' size 0.70-1.23 alone, 0.70-0.95 blended). With ``p.small_circles``, cells
    under the circles' floor are sized by a second search for smaller circles (see ``FieldParams``)."""
    radii = _circle_radii(d, CIRCLE_FLOOR)
    if p is not None and p.small_circles > 0 and _spread(radii) >= p.circle_spread:
        radii = _smaller_circles(d, p, radii)
    if len(radii) < 3:
        return fallback, math.inf
    return float(median(radii)), _spread(radii)


def _smaller_circles(d: _Density, p: FieldParams, first: np.ndarray) -> np.ndarray:
    """The circles that size a field whose ``first`` circles disagree: circles down to the short
    side / ``p.small_floor`` when they outnumber the first ``p.small_circles`` x and agree (spread
    under ``p.small_spread``), or, ten or more scattering a little more, when the quick distance
    map (:func:`_quick_radius`) puts the cells nearer their median than the first circles'; the
    first otherwise. No search where that map sizes the cells at ``p.small_skip`` x the first
    circles' floor or more: smaller circles cannot be them (BCCD's few large cells, at a third of
    the search's cost)."""
    quick = _quick_radius(d, p) if p.small_skip > 0 else None
    if quick is not None and quick >= p.small_skip * min(d.u8.shape) / CIRCLE_FLOOR:
        return first
    small = _circle_radii(d, p.small_floor)
    if len(small) < p.small_circles * len(first):
        return first
    spread = _spread(small)
    if spread < p.small_spread:
        return small
    if math.isinf(spread):
        return first
    quick = _quick_radius(d, p) if quick is None else quick
    return small if _nearer(quick, small, first) else first


def _nearer(size: float, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether circles ``a``'s median radius is nearer ``size`` (as a ratio) than ``b``'s."""
    if size <= 0 or not len(a):
        return False
    off_a = abs(math.log(float(median(a)) / size))
    return not len(b) or off_a < abs(math.log(float(median(b)) / size))


def _quick_radius(d: _Density, p: FieldParams) -> float:
    """The cells' radius from the distance map of a quick foreground (the threshold, convex pale
    centres up to twice the first circles' floor filled); 0.0 without background."""
    floor = min(d.u8.shape) / CIRCLE_FLOOR
    fg, thr = _thresholded(d, p.threshold, _floor(d, p))
    fg = _fill_holes(fg, d.blur5, p.hole_density * thr, math.pi * (2 * floor) ** 2, p.hole_solidity)
    if fg.min() > 0:
        return 0.0
    dist = distance_map(fg, 3)
    return _estimate_radius(dist, fg, floor)


def _nucleus_pixels(od: np.ndarray, p: FieldParams, d: _Density) -> np.ndarray:
    """Nucleus-stained pixels. With the field's stain direction (``density="stain"``): pixels denser
    than the field's cells (``nucleus_dense`` x their 90th percentile along the stain colour) whose
    colour in optical density departs from the cells' (the density off that colour exceeds
    ``nucleus_off`` x theirs): Giemsa nuclei absorb another mix of colours than red cells, on any
    shade. Without: purple pixels, absorbing red much more than blue (pink Giemsa)."""
    cv2 = opencv()
    if d.direction is None:
        nuc = (od[:, :, 0] > p.nucleus_od) & (od[:, :, 0] - od[:, :, 2] > p.nucleus_contrast)
    else:
        cells = 200.0 / d.scale  # the cells' 90th percentile along the stain colour
        nuc = d.along > max(p.nucleus_od, p.nucleus_dense * cells)
        v = od[nuc]  # the few dense pixels only
        off2 = np.einsum("ij,ij->i", v, v) - (v @ d.colour) ** 2
        nuc[nuc] = off2 > (p.nucleus_off * cells) ** 2
    nuc = nuc.astype(np.uint8)
    return cv2.morphologyEx(nuc, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))


def _nucleus_zone(nuc: np.ndarray, radius: float, p: FieldParams) -> np.ndarray:
    """Where white cells are: large nucleus-stained blobs, grown by half a radius."""
    cv2 = opencv()
    n, labels, stats, _ = cv2.connectedComponentsWithStats(nuc, connectivity=8)
    big = np.zeros(n, bool)
    big[1:] = stats[1:, cv2.CC_STAT_AREA] >= p.min_nucleus_area * math.pi * radius * radius
    zone = big[labels].astype(np.uint8)  # cv2 stub: labels may be float # pyright: ignore[reportCallIssue, reportArgumentType]
    if zone.any():
        zone = cv2.dilate(zone, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(radius),) * 2))
    return zone.astype(bool)


def _cell_circles(d: _Density, radius: float, p: FieldParams) -> np.ndarray:
    """Cell-sized circles on the cells' outlines (Hough transform), strongest first, as rows of
    (x, y, r); empty when off or none. Each arc of a cell's outline votes for its own centre, so
    two overlapping cells give two circles even where their union's distance map has one peak:
    with ``split_circles``, circles as close as that x radius are kept apart."""
    if p.hough_votes <= 0:
        return np.zeros((0, 3), np.float32)
    cv2 = opencv()
    gap = min(p.peak_window, p.split_circles) if p.split_circles > 0 else p.peak_window
    circles = cv2.HoughCircles(
        d.blur2, cv2.HOUGH_GRADIENT, dp=1, minDist=gap * radius, param1=p.hough_edge,
        param2=p.hough_votes, minRadius=int(0.75 * radius), maxRadius=int(1.4 * radius),
    )
    return np.zeros((0, 3), np.float32) if circles is None else circles[0]


def _circle_seeds(
    circles: np.ndarray, fg: np.ndarray, dist: np.ndarray, radius: float, p: FieldParams,
    taken: list[tuple[int, int]],
) -> list[tuple[int, int, float]]:
    """Extra seeds inside clumps too dense for distance peaks: centres of cell-sized ``circles``
    (:func:`_cell_circles`) that lie on the foreground, away from other seeds."""
    h, w = fg.shape
    pts = np.array(taken, np.float32).reshape(-1, 2)
    out: list[tuple[int, int, float]] = []
    for x, y, _ in circles:
        iy, ix = min(h - 1, int(y)), min(w - 1, int(x))
        if not fg[iy, ix] or dist[iy, ix] < p.peak_height * radius:
            continue
        if len(pts) and float(np.min(np.hypot(pts[:, 0] - iy, pts[:, 1] - ix))) < p.peak_window * radius:
            continue
        out.append((iy, ix, float(dist[iy, ix])))
        pts = np.vstack([pts, [[iy, ix]]])
    return out


def _split_touching(
    circles: np.ndarray, fg: np.ndarray, dist: np.ndarray, radius: float, p: FieldParams
) -> tuple[np.ndarray, int, np.ndarray]:
    """Split touching cells: one seed per distance-transform peak, then every foreground pixel goes
    to the seed of its blob minimizing (distance to seed - seed's own radius). For overlapping
    discs this is the watershed of the distance transform (the cut runs through the waist between
    two cells) without a flooding loop; OpenCV's watershed floods by colour difference between
    neighbours, which a smooth distance map does not have. Also returns, per region (index k - 1
    for label k), whether it shares its foreground blob with another seed (touching cells)."""
    cv2 = opencv()
    win = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(p.peak_window * radius),) * 2)
    peaks = (dist >= cv2.dilate(dist, win) - 1e-3) & (dist > p.peak_height * radius)
    # plateaus and near-ties give several nearby peak pixels: merge those within a small window
    merge = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(radius * 0.3),) * 2)
    peaks = cv2.dilate(peaks.astype(np.uint8), merge) & (fg > 0).astype(np.uint8)  # cv2 stub: may be float # pyright: ignore[reportOperatorIssue]
    n, seeds, stats, _ = cv2.connectedComponentsWithStats(peaks, connectivity=8)
    del peaks
    # each seed sits on its highest distance pixel (a merged seed's centroid may fall outside)
    found = []
    for k in range(1, n):
        x, y, sw, sh = stats[k, :4]
        sub = np.where(seeds[y : y + sh, x : x + sw] == k, dist[y : y + sh, x : x + sw], -1.0)
        iy, ix = np.unravel_index(int(sub.argmax()), sub.shape)
        found.append((y + iy, x + ix, float(sub[iy, ix])))
    del seeds  # a plane of int32 labels: not held with the blobs' and the split's own
    n_blobs, blobs, blob_stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    h, w = fg.shape
    if p.hough_votes > 0:
        found += _circle_seeds(circles, fg, dist, radius, p, [(y, x) for y, x, _ in found])
    if p.seed_cap > 0:
        # inside a solid clump of overlapping cells the distance map is wider than any one cell:
        # a seed claims at most about one cell's radius (plus reach), not the clump's depth
        found = [(cy, cx, min(r_k, p.seed_cap * radius)) for cy, cx, r_k in found]
    per_blob = np.bincount([blobs[cy, cx] for cy, cx, _ in found], minlength=n_blobs)
    labels = np.zeros((h, w), np.int32)
    best = np.full((h, w), np.inf, np.float32)
    reach = p.reach * radius
    for k, (cy, cx, r_k) in enumerate(found, start=1):
        blob = blobs[cy, cx]
        if per_blob[blob] == 1:  # cv2 stub: labels may be float # pyright: ignore[reportCallIssue, reportArgumentType]  # a lone cell keeps its whole blob, whatever its shape
            bx, by, bw, bh = blob_stats[int(blob), :4]  # only its box is looked at, not the whole field
            labels[by : by + bh, bx : bx + bw][blobs[by : by + bh, bx : bx + bw] == blob] = k
            continue
        y0, y1 = max(0, int(cy - r_k - reach)), min(h, int(cy + r_k + reach) + 1)
        x0, x1 = max(0, int(cx - r_k - reach)), min(w, int(cx + r_k + reach) + 1)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        score = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2, dtype=np.float32) - r_k
        take = (blobs[y0:y1, x0:x1] == blob) & (score < best[y0:y1, x0:x1]) & (score < reach)
        best[y0:y1, x0:x1][take] = score[take]
        labels[y0:y1, x0:x1][take] = k
    shared = np.array([per_blob[blobs[cy, cx]] > 1 for cy, cx, _ in found], bool)  # pyright: ignore[reportCallIssue, reportArgumentType]
    return labels, len(found), shared


def _elongation(ys: np.ndarray, xs: np.ndarray) -> float:
    """Ratio of a region's longest to shortest axis (square root of its coordinates' covariance
    eigenvalues): about 1 for one round cell, 1.5-2 for two overlapping ones."""
    if ys.size < 3:
        return 1.0
    lo, hi = np.linalg.eigvalsh(np.cov(np.stack([ys, xs]).astype(np.float64)))
    return math.sqrt(hi / lo) if lo > 1e-9 else math.inf


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
    return segment_cells(rgb, params)[0]


def working_copy(rgb: np.ndarray, max_side: int, enlarge: bool = False) -> tuple[np.ndarray, float]:
    """The field shrunk (by pixel area) so its longer side is at most ``max_side``, and the scale;
    the field itself when it is small enough, or with ``enlarge`` a smaller field enlarged (bilinear)
    so its longer side is ``max_side``. The same bytes on every CPU (:mod:`.resample`)."""
    H, W = rgb.shape[:2]
    scale = max_side / max(H, W) if enlarge else min(1.0, max_side / max(H, W))
    if scale == 1.0:
        return rgb, 1.0
    return resize_exact(rgb, (round(W * scale), round(H * scale))), scale


def _typical_radius(
    dist: np.ndarray, fg: np.ndarray, circles: float, spread: float, scale: float, p: FieldParams
) -> float:
    """The typical cell radius in working-copy pixels: the given one, or the distance map's
    estimate blended with the circles' radius (``circles``, their ``spread``) when measured."""
    if p.cell_radius:
        return p.cell_radius * scale
    radius = _estimate_radius(dist, fg, circles if p.radius_peaks else 0.0)
    if not p.hough_radius or radius < 3:
        return radius
    if p.radius_cap > 0 and radius > p.radius_cap * circles and spread < p.circle_spread:
        # a crowded field: the distance map's maxima sit in solid clumps, deeper than any one
        # cell, while the circles agree on one size (on BCCD, circles far below the distance
        # map are pale centres mixed with whole cells, and spread widely)
        radius = circles
    elif radius < p.radius_floor * circles:
        # cells read as rings (pale centres at the background's density, not filled): the distance
        # map's maxima are the rings' half-width, while the circles still measure whole cells
        radius = circles
    # blended (geometric mean) with the circles' radius, which runs a little small
    return math.sqrt(radius * (circles or radius)) * p.radius_gain


def _with_rims(
    fg: np.ndarray, density: _Density, holes: _Holes, radius: float, p: FieldParams
) -> tuple[np.ndarray, np.ndarray]:
    """The foreground with pale "ghost" cells made whole, and its distance transform: such cells
    show only a thin darker rim, which a local threshold finds and filling makes a cell."""
    cv2 = opencv()
    u8 = cv2.GaussianBlur(density.u8, (3, 3), 0)
    local = cv2.blur(u8, (_odd(radius),) * 2)
    floor = _floor(density, p)
    rim = ((u8.astype(np.int16) - local > p.rim) & (u8 >= floor)).astype(np.uint8) * 255
    rim = cv2.morphologyEx(rim, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    fg = holes.fill(fg | rim, density, _threshold(density, p.threshold, floor))
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    return fg, distance_map(fg)


def _fill_rings(
    fg: np.ndarray, dist: np.ndarray, radius: float, p: FieldParams
) -> tuple[np.ndarray, np.ndarray]:
    """The foreground with cell-sized rings and "C"s made whole cells (their convex hull), and its
    distance transform. A cell whose pale centre reads as background (clipped white, or off the
    stain colour) keeps only its outline: no distance peak, so no seed. Only regions whose hull is
    between ``min_area`` and ``ring_area`` x a cell's area and that fill less than
    ``ring_solidity`` of it (a clump of touching cells is larger, a solid cell fills its hull), and,
    above ``split_min_area`` x a cell, whose hull's centre is clear (two overlapping cells are
    concave at their waist but solid in the middle: filled, they lost 5 IML cells of 6 fields)."""
    cv2 = opencv()
    cell_area = math.pi * radius * radius
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    box_area = stats[:, cv2.CC_STAT_WIDTH] * stats[:, cv2.CC_STAT_HEIGHT]
    # the hull lies inside the bounding box: a cheap first cut
    area = stats[:, cv2.CC_STAT_AREA]
    candidates = np.nonzero((box_area >= p.min_area * cell_area) & (area < p.ring_solidity * box_area))[0]
    hulls = []
    for k in candidates[candidates > 0]:
        x, y, bw, bh = stats[k, :4]
        contours, _ = cv2.findContours((labels[y : y + bh, x : x + bw] == k).astype(np.uint8),
                                       cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        hull = cv2.convexHull(np.concatenate(contours))
        hull_area = cv2.contourArea(hull)
        if not p.min_area * cell_area <= hull_area <= p.ring_area * cell_area:
            continue
        if area[k] >= p.ring_solidity * hull_area:
            continue
        m = cv2.moments(hull)
        cy, cx = int(m["m01"] / max(m["m00"], 1e-6)), int(m["m10"] / max(m["m00"], 1e-6))
        if hull_area > p.split_min_area * cell_area and labels[y + min(bh - 1, cy), x + min(bw - 1, cx)] == k:
            continue  # larger than a cell and no clear centre: overlapping cells, not an outline
        hulls.append(hull + np.array([x, y], hull.dtype))
    if not hulls:
        return fg, dist
    fg = fg.copy()
    for hull in hulls:
        cv2.fillConvexPoly(fg, hull, 255)
    return fg, distance_map(fg)


def _regions(markers: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The pixel coordinates (ys, xs) of each of the ``n`` labelled regions of ``markers``, as int32
    (half the memory of numpy's indices; every use of them promotes as int64 would)."""
    w = markers.shape[1]
    flat = markers.ravel()
    # label 0 (no region, much of the field) is never returned: not sorted; the labels taken once
    inside = np.flatnonzero(flat).astype(np.int32)
    labels = flat[inside]
    order = inside[np.argsort(labels, kind="stable")]
    del inside
    ends = np.cumsum(np.bincount(labels, minlength=n + 1))  # ends[0] == 0
    return [np.divmod(order[ends[k - 1] : ends[k]], w) for k in range(1, n + 1)]


def _circle_centres(
    circles: np.ndarray, markers: np.ndarray, n: int, radius: float, p: FieldParams
) -> list[list[tuple[float, float, float]]]:
    """For each of the ``n`` regions of ``markers``, the circles (y, x, r) of ``circles`` whose
    centres lie in it, strongest first, each at least ``split_circles`` x radius from the ones
    before it."""
    out: list[list[tuple[float, float, float]]] = [[] for _ in range(n + 1)]
    if p.split_circles <= 0:
        return out[1:]
    h, w = markers.shape
    for x, y, r in circles:
        k = markers[min(h - 1, int(y)), min(w - 1, int(x))]
        if k and all(math.hypot(y - cy, x - cx) >= p.split_circles * radius for cy, cx, _ in out[k]):
            out[k].append((float(y), float(x), float(r)))
    return out[1:]


def _circle_split(
    ys: np.ndarray, xs: np.ndarray, circles: list[tuple[float, float, float]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One region shared out between overlapping cells: each circle takes the pixels nearer its
    centre than any other's, and those of its own disc (the lens two overlapping cells share
    belongs to both, as their labelled boxes do)."""
    c = np.asarray(circles, np.float32)
    d2 = (ys[:, None] - c[None, :, 0]) ** 2 + (xs[:, None] - c[None, :, 1]) ** 2
    near = np.argmin(d2, axis=1)
    parts = []
    for j in range(len(c)):
        take = (near == j) | (d2[:, j] <= c[j, 2] ** 2)
        parts.append((ys[take], xs[take]))
    return parts


def _oblong_along(
    ys: np.ndarray, xs: np.ndarray, centres: list[tuple[float, float, float]]
) -> bool:
    """Whether the region is longer along the line through the two ``centres`` than across it by
    at least half their distance, as two overlapping discs are (by about the whole distance); a
    round cell with two circles in it is not."""
    (y0, x0, _), (y1, x1, _) = centres
    d = math.hypot(y1 - y0, x1 - x0)
    uy, ux = (y1 - y0) / d, (x1 - x0) / d
    along = percentile(ys * uy + xs * ux, [2, 98])
    across = percentile(xs * uy - ys * ux, [2, 98])
    return float(np.ptp(along) - np.ptp(across)) >= 0.25 * d


def _split_clumps(
    regions: list[tuple[np.ndarray, np.ndarray]], cell_area: float, p: FieldParams,
    centres: list[list[tuple[float, float, float]]] | None = None,
    touching: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """The regions, those that hold several cells split by area (sizes relative to the field's
    typical single cell) or by the cell circles in them (``centres``, :func:`_circle_centres`),
    empty ones left out; each with how it was separated (:data:`~.types.SEPARATIONS`): cut out
    of a clump of overlapping cells, split from ``touching`` neighbours, or alone."""
    single = [ys.size for ys, _ in regions if 0.5 * cell_area <= ys.size <= 1.5 * cell_area]
    typical = float(median(single)) if len(single) >= 3 else cell_area
    pieces: list[tuple[np.ndarray, np.ndarray, str]] = []
    for k, (ys, xs) in enumerate(regions):
        parts = _clump_parts(ys, xs, centres[k] if centres else [], typical, p)
        if len(parts) > 1:
            pieces += [(py, px, "overlapping") for py, px in parts]
        elif parts or ys.size:
            py, px = parts[0] if parts else (ys, xs)
            pieces.append((py, px, "touching" if touching is not None and touching[k] else "alone"))
    return pieces


def _clump_parts(
    ys: np.ndarray, xs: np.ndarray, inside: list[tuple[float, float, float]], typical: float, p: FieldParams,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The cells one region holds when it is a clump (none when it is one cell): split by area, by
    the cell circles ``inside`` it, or, oblong, in two."""
    if p.split_area > 0 and ys.size > p.split_area * typical:
        # a clump the seeds did not split: as many cells as its area holds, nearest-centre split
        return _kmeans_split(ys, xs, int(round(ys.size / typical)))
    if len(inside) >= 2 and ys.size > p.split_min_area * typical:
        # overlapping cells whose union has one distance peak (a seed between them), while the
        # arcs of their outlines give a circle each: cut between the circles' centres
        parts = _circle_split(ys, xs, inside[: max(2, int(round(ys.size / typical)))])
        big = min(py.size for py, _ in parts) >= p.min_area * typical
        return parts if big and _oblong_along(ys, xs, inside[:2]) else []
    if (p.split_elongation > 0 and ys.size > p.split_min_area * typical
            and _elongation(ys, xs) > p.split_elongation):
        # two overlapping cells: a little more than one cell's area, but oblong, not round
        return _kmeans_split(ys, xs, max(2, int(round(ys.size / typical))))
    return []


def _region_mask(ys: np.ndarray, xs: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The region's pixels as a uint8 mask of ``box`` (y0, y1, x0, x1)."""
    y0, y1, x0, x1 = box
    local = np.zeros((y1 - y0, x1 - x0), np.uint8)
    local[ys - y0, xs - x0] = 1
    return local


def _owners(pieces: list[tuple[np.ndarray, np.ndarray, str]], shape: tuple[int, ...]) -> np.ndarray:
    """Which piece (1..n, 0: none) owns each working-copy pixel; a lens two pieces share, the later
    (the cropper takes a cell's own pixels as its own whatever this map says)."""
    owner = np.zeros(shape[:2], np.int32)
    for k, (ys, xs, _) in enumerate(pieces, start=1):
        owner[ys, xs] = k
    return owner


def _hull_mask(own: np.ndarray) -> np.ndarray:
    """The convex hull of a region's mask (:func:`_region_mask`): a pale centre open to one side
    (a "C") and the straight cut between two overlapping cells both belong to the cell, as in the
    NIH masks."""
    cv2 = opencv()
    contours, _ = cv2.findContours(own, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours))  # the outline's hull: that of all its pixels
    return cv2.fillConvexPoly(np.zeros_like(own), hull, 1)


def _joined_to(mask: np.ndarray, own: np.ndarray) -> np.ndarray:
    """The parts of ``mask`` (uint8) connected to a pixel of ``own``: a hull with a neighbour's
    region taken out may leave a sliver beyond it."""
    n, labels = opencv().connectedComponents(mask, connectivity=8)
    if n <= 2:
        return mask
    keep = np.zeros(n, bool)
    keep[labels[own > 0]] = True  # cv2 stub: labels may be float # pyright: ignore[reportCallIssue, reportArgumentType]
    keep[0] = False
    return keep[labels].astype(np.uint8)  # cv2 stub: labels may be float # pyright: ignore[reportCallIssue, reportArgumentType]


@dataclass(frozen=True)
class _Cropper:
    """Turns a field's regions (working-copy pixels) into cells of the full-resolution field."""

    p: FieldParams
    radius: float  # typical cell radius, working-copy pixels
    scale: float  # working copy / field
    zone: np.ndarray  # bool: where white cells are (:func:`_nucleus_zone`)
    edge_fg: np.ndarray | None  # bool: the faint stain a cell's mask may grow into; None: no growth
    full: tuple[int, int]  # the field's (height, width)
    beyond: np.ndarray | None = None  # bool: outside the field of view, grown by a pixel (None: all inside)
    # int32: which region owns each pixel, 0 none (``FieldParams.own_pixels``; None: off)
    owner: np.ndarray | None = None

    def cell(self, ys: np.ndarray, xs: np.ndarray, index: int, separation: str = "alone") -> CellBox | None:
        """Region (ys, xs) as cell number ``index``; None when it is no red cell."""
        h, w = self.zone.shape
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        edge = x0 == 0 or y0 == 0 or x1 == w or y1 == h
        edge = edge or (self.beyond is not None and bool(self.beyond[ys, xs].any()))
        if self._rejected(ys, xs, edge):
            return None
        if self.p.grow > 0:
            g = self._growth
            y0, y1, x0, x1 = max(0, y0 - g), min(h, y1 + g), max(0, x0 - g), min(w, x1 + g)
        box = (y0, y1, x0, x1)
        own = _region_mask(ys, xs, box)
        local = _hull_mask(own)
        # the pixels another region owns (a pixel of a lens shared with this region is its own too)
        others = None
        if self.owner is not None:
            others = (self.owner[y0:y1, x0:x1] > 0) & (own == 0)
            if (others & (local > 0)).any():
                local = _joined_to(local & ~others, own)
        if self.edge_fg is not None:
            local, box = self._grown(local, box, self.edge_fg, others)
        if self.scale != 1.0:
            local, box = self._full_resolution(local, box)
        y0, y1, x0, x1 = box
        mask = local.astype(bool)
        return CellBox(index, int(x0), int(y0), int(x1 - x0), int(y1 - y0), area=int(mask.sum()), mask=mask,
                       edge=bool(edge), separation=separation)

    @property
    def _growth(self) -> int:
        return int(round(self.p.grow * self.radius))

    def _rejected(self, ys: np.ndarray, xs: np.ndarray, edge: bool) -> bool:
        """Too small (debris, platelets; cut cells may be smaller), too large, or inside a white cell."""
        p = self.p
        cell_area = math.pi * self.radius * self.radius
        area = ys.size
        if area < (p.min_edge_area if edge else p.min_area) * cell_area or area > p.max_area * cell_area:
            return True
        return bool(self.zone[ys, xs].mean() > p.max_wbc_overlap)

    def _grown(
        self, local: np.ndarray, box: tuple[int, int, int, int], edge_fg: np.ndarray,
        others: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """The mask grown into the faint stain around it (the pale edge the threshold cut off),
        never into ``others`` (pixels other regions own), cropped to its new extent."""
        cv2 = opencv()
        y0, y1, x0, x1 = box
        g = self._growth
        grown = cv2.dilate(local, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * g + 1,) * 2))
        reach: np.ndarray = edge_fg[y0:y1, x0:x1] if others is None else edge_fg[y0:y1, x0:x1] & ~others
        local |= grown & reach
        ly, lx = np.nonzero(local)
        local = local[ly.min() : ly.max() + 1, lx.min() : lx.max() + 1]
        y0, x0 = y0 + ly.min(), x0 + lx.min()
        return local, (y0, y0 + local.shape[0], x0, x0 + local.shape[1])

    def _full_resolution(
        self, local: np.ndarray, box: tuple[int, int, int, int]
    ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """The mask and box in the full-resolution field's pixels."""
        cv2 = opencv()
        H, W = self.full
        y0, y1, x0, x1 = box
        fx0, fy0 = int(x0 / self.scale), int(y0 / self.scale)
        fx1, fy1 = min(W, int(math.ceil(x1 / self.scale))), min(H, int(math.ceil(y1 / self.scale)))
        local = cv2.resize(local, (fx1 - fx0, fy1 - fy0), interpolation=cv2.INTER_NEAREST)
        return local, (fy0, fy1, fx0, fx1)


def segment_cells(
    rgb: np.ndarray, params: FieldParams | None = None, work: tuple[np.ndarray, float] | None = None,
    outside: np.ndarray | None = None, sized: tuple[float, float] | None = None,
) -> tuple[list[CellBox], float]:
    """The cell finder (see the package docstring): the red cells of a field, boxes and masks in
    full-resolution pixels, and the typical cell radius in those pixels (0.0 with no cells to size,
    and then no cells; no cells either when that radius is a pile's, see ``MAX_RADIUS_FRACTION``).
    ``work``: the field's :func:`working_copy` at ``params.max_side`` when the caller has it already;
    ``outside``: where the field lies outside the microscope's field of view
    (:func:`edgekit.device.field.view.outside_view`, painted as background), left out of the field's
    statistics, and a cell touching it is cut as at the border; ``sized``: the circles' radius (in
    the field's pixels) and spread when a coarser copy measured them already. No quality check:
    :func:`edgekit.device.field.count_cells` is the gate and the finder together."""
    cv2 = opencv()
    p = params or FieldParams()
    H, W = rgb.shape[:2]
    small, scale = work or working_copy(rgb, p.max_side, p.enlarge)
    small, beyond = _flattened(small, outside, p)
    inside = None if beyond is None else beyond == 0
    od = _optical_density(small, p)
    work_shape = small.shape
    del small  # its flattened copy, when lighting made one: only its size is needed from here
    direction, colour = (_stain_direction(od, p.stain_power, p.stain_floor, p.stain_otsu, inside)
                         if p.density == "stain" else (None, None))
    density = _Density.of(od, direction, colour, inside)
    nuc = _nucleus_pixels(od, p, density)
    del od  # the largest plane (3 floats a pixel): not held while the foreground is found
    # the circles' radius needs no foreground: it sizes the pale centres the foreground may fill
    estimate = p.hough_radius and not p.cell_radius
    circles, spread = _field_circles(density, p, scale, sized if estimate else None)
    finer = _finer_side(circles, work_shape, (H, W), p) if estimate else 0
    if finer:  # the circles measured here size the cells there: no second round of searches
        return segment_cells(rgb, replace(p, max_side=finer, fine_cells=0.0), None, outside,
                             (circles / scale, spread))
    holes = _Holes(p.hole_density, p.hole_area * math.pi * circles**2, p.hole_solidity)
    floor = _floor(density, p)
    fg = _foreground(density, p.threshold, floor, holes)
    if fg.min() > 0:  # not one background pixel: no distance is defined (OpenCV returns FLT_MAX)
        return [], float(max(H, W))  # one mass as wide as the field (count_cells says so)
    dist = distance_map(fg)
    radius = _typical_radius(dist, fg, circles, spread, scale, p)
    if radius < 3:
        return [], 0.0
    if radius / scale > min(H, W) / MAX_RADIUS_FRACTION:
        # a pile, refused by count_cells: no circles of that size are sought (on a field of noise,
        # seconds of Hough transform, against a hundredth of one on a real field)
        return [], radius / scale
    if p.rim > 0:
        fg, dist = _with_rims(fg, density, holes, radius, p)
    if p.ring_solidity > 0:
        fg, dist = _fill_rings(fg, dist, radius, p)
    circles = _cell_circles(density, radius, p)
    markers, n, touching = _split_touching(circles, fg, dist, radius, p)
    # growth only reaches into faintly stained pixels (a cell's pale edge), never into background
    edge_fg = _foreground(density, p.threshold * p.grow_threshold, floor) > 0 if p.grow > 0 else None
    if beyond is not None:  # a cell touching the surround is cut, as at the border
        beyond = cv2.dilate(beyond, np.ones((3, 3), np.uint8)).astype(bool)
    del fg, dist, density  # ~3.5 MB of planes a 640-px copy has: not held while its regions are listed
    pieces = _split_clumps(_regions(markers, n), math.pi * radius * radius, p,
                           _circle_centres(circles, markers, n, radius, p), touching)
    del markers
    owner = _owners(pieces, work_shape[:2]) if p.own_pixels else None
    cropper = _Cropper(p, radius, scale, _nucleus_zone(nuc, radius, p), edge_fg, (H, W), beyond, owner)
    cells: list[CellBox] = []
    for ys, xs, separation in pieces:
        cell = cropper.cell(ys, xs, len(cells), separation)
        if cell is not None:
            cells.append(cell)
    return cells, radius / scale


def _field_circles(
    d: _Density, p: FieldParams, scale: float, sized: tuple[float, float] | None
) -> tuple[float, float]:
    """The circles' radius in working-copy pixels and their spread (:func:`_circle_radius`): as
    ``sized`` (field pixels) says, measured, or ``p.cell_radius`` with no circles sought."""
    if sized is not None:
        return sized[0] * scale, sized[1]
    if p.hough_radius and not p.cell_radius:
        return _circle_radius(d, 0.0, p)
    return (p.cell_radius or 0.0) * scale, 0.0


def _finer_side(circles: float, work: tuple[int, ...], full: tuple[int, int], p: FieldParams) -> int:
    """The longer side of a working copy on which cells this small are found, or 0 to stay on this
    one: cells whose circles measure under ``p.fine_cells`` x the first circles' floor (a lower
    magnification: the smaller-circle search sized them) are a few pixels across, where the
    finder's pixel-sized steps (5-px blur and opening, the Hough transforms' blur) merge and lose
    them; the copy is made larger so they measure ``p.fine_target`` x that floor, never beyond the
    field's own pixels."""
    floor = min(work[:2]) / CIRCLE_FLOOR
    if p.fine_cells <= 0 or not 0 < circles < p.fine_cells * floor:
        return 0
    side = min(max(full), round(max(work[:2]) * p.fine_target * floor / circles))
    return side if side > max(work[:2]) else 0


def _flattened(small: np.ndarray, outside: np.ndarray | None,
               p: FieldParams) -> tuple[np.ndarray, np.ndarray | None]:
    """The working copy with its lighting flattened (a dim side or a vignette: one stained/unstained
    line no longer fits the whole field; only this copy is flattened, the crops come from the field as
    it is), and ``outside`` at its size (None: all inside the field of view)."""
    cv2 = opencv()
    light = None if p.max_falloff is None else lighting(small, p.max_falloff)
    if light is not None:
        small = flatten(small, light)
    beyond = None if outside is None else cv2.resize(
        outside.astype(np.uint8), small.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    return small, beyond


def cell_radius(rgb: np.ndarray, max_side: int = 400, params: FieldParams | None = None) -> float:
    """The typical red-cell radius in ``rgb``'s pixels, cheaply: the Hough circles of
    :func:`_circle_radius` on a working copy at most ``max_side`` wide (green density, no
    foreground); 0.0 when too few circles. It follows the field's scale and barely moves with blur
    (IML fields: within a few % for a 1.5x or 0.75x copy or a Gaussian blur of sigma 4; on single
    BCCD fields up to ~30% with sigma 3), which is what a cell-scale focus measure needs."""
    p = params or FieldParams()
    work, scale = working_copy(rgb, max_side)
    radius, _ = _circle_radius(_Density.of(_optical_density(work, p)), 0.0)
    return radius / scale
