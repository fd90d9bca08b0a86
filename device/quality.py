# pyright: basic
"""Image quality gates run before classification: too small, blank, over/under-exposed, blurred.

Cell crops (NIH style) are one stained cell on a black background, so exposure and sharpness are
measured on the *foreground* (pixels brighter than ``dark_level``), and blur on the foreground's
interior, away from the cell's edge against black (which is sharp even in a blurred image).
Thresholds are calibrated so real NIH crops essentially all pass (see ``calibrate``): on 2,000
crops the 0.1st percentiles were side 67 px, grey std 49, 40% lit, mean grey 115, 0% saturated
and core Laplacian variance ~5.0 (JPEG q75 re-encoded: ~3.4), while the same crops blurred with a
Gaussian of sigma 2 px stay below ~2.8 (99th percentile), hence ``min_sharpness`` = 3.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgekit.device.domain import check_cell
from edgekit.device.order import percentile

if TYPE_CHECKING:
    from edgekit.manifest import Domain


@dataclass(frozen=True)
class QualityGates:
    """Reject when a measure crosses its limit. Defaults: calibrated on 2,000 NIH crops."""

    min_side: int = 16  # pixels; NIH crops are >= ~40 px
    min_std: float = 4.0  # grey-level std over the whole image: below it the image is blank/uniform
    dark_level: int = 16  # grey level under which a pixel is background / unexposed
    min_foreground: float = 0.05  # fraction of pixels above dark_level: under it -> under-exposed
    max_saturated: float = 0.25  # fraction of foreground pixels >= 250 in every channel -> over-exposed
    min_foreground_mean: float = 40.0  # mean grey of the foreground: under it -> under-exposed
    min_sharpness: float = 3.0  # variance of the Laplacian inside the foreground: under it -> blurred

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_GATES = QualityGates()


def measure(rgb: np.ndarray, dark_level: int = DEFAULT_GATES.dark_level) -> dict[str, float]:
    """The quality measures of an RGB uint8 image (what :func:`check_quality` compares).

    OpenCV masked reductions throughout (a grey histogram gives the foreground median): about 5x
    faster than the equivalent NumPy boolean indexing, with the same values."""
    import cv2

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    fg = cv2.compare(gray, dark_level, cv2.CMP_GT)  # scalar operand: cv2 stub too strict # pyright: ignore[reportCallIssue, reportArgumentType]
    n_fg = cv2.countNonZero(fg)
    if rgb.ndim == 3:
        saturated = cv2.countNonZero(cv2.inRange(rgb, (250, 250, 250), (255, 255, 255)))
    else:
        saturated = cv2.countNonZero(cv2.compare(gray, 250, cv2.CMP_GE))  # scalar: cv2 stub too strict # pyright: ignore[reportCallIssue, reportArgumentType]
    # Blur: Laplacian variance inside the cell's core, away from its edge. The edge against black
    # stays high-contrast when the image is blurred (and blur widens it into a halo), so the core is
    # where the grey level reaches 60% of the foreground median, eroded by 10% of the short side.
    core_level = max(dark_level, 0.6 * _masked_median(gray, fg, n_fg)) if n_fg else dark_level
    k = max(3, int(min(gray.shape[:2]) * 0.1) | 1)
    core = cv2.compare(gray, float(core_level), cv2.CMP_GT)  # scalar operand: cv2 stub too strict # pyright: ignore[reportCallIssue, reportArgumentType]
    interior = cv2.erode(core, np.ones((k, k), np.uint8))
    # int16 holds the 3x3 Laplacian of uint8 exactly (|value| <= 4 x 255), and meanStdDev sums in
    # double either way: the same sharpness as CV_64F, with a quarter of the plane to write and read
    lap = cv2.Laplacian(gray, cv2.CV_16S)
    _, std = cv2.meanStdDev(lap, mask=interior if cv2.countNonZero(interior) >= 16 else None)
    _, gray_std = cv2.meanStdDev(gray)
    return {
        "min_side": float(min(gray.shape[:2])),
        "std": float(gray_std[0, 0]),
        "foreground": n_fg / gray.size,
        "saturated": saturated / n_fg if n_fg else 0.0,
        "foreground_mean": float(cv2.mean(gray, mask=fg)[0]) if n_fg else 0.0,
        "sharpness": float(std[0, 0]) ** 2,
    }


def _masked_median(gray: np.ndarray, mask: np.ndarray, n: int) -> float:
    """``np.median(gray[mask > 0])`` from a 256-bin histogram (n = the mask's pixel count)."""
    import cv2

    cum = np.cumsum(cv2.calcHist([gray], [0], mask, [256], [0, 256]).ravel())
    lo = int(np.searchsorted(cum, (n - 1) // 2, side="right"))
    hi = int(np.searchsorted(cum, n // 2, side="right"))
    return (lo + hi) / 2


def check_quality(
    rgb: np.ndarray, gates: QualityGates = DEFAULT_GATES, domain: Domain | None = None,
    features: np.ndarray | None = None, distance: float | None = None, cut: bool = False,
) -> str | None:
    """None when the image passes, else a short reason (recorded as the rejection reason).

    With the bundle's ``domain`` (its training cells' statistics), images that are plainly not a
    cell like them are rejected too (:func:`check_cell`; ``features``: the crop's
    :func:`~edgekit.device.domain.crop_features` and ``distance`` their distance from the training
    cells, when the caller has them already; ``cut``: a cell the finder cut from a field)."""
    h, w = rgb.shape[:2]
    if min(h, w) < gates.min_side:
        return f"too small ({w}x{h} < {gates.min_side} px)"
    m = measure(rgb, gates.dark_level)
    if m["std"] < gates.min_std:
        return f"blank or nearly uniform (grey std {m['std']:.1f} < {gates.min_std})"
    if m["foreground"] < gates.min_foreground or m["foreground_mean"] < gates.min_foreground_mean:
        return (
            f"under-exposed ({m['foreground']:.0%} of pixels lit, mean grey {m['foreground_mean']:.0f})"
        )
    if m["saturated"] > gates.max_saturated:
        return f"over-exposed ({m['saturated']:.0%} of the image saturated)"
    if m["sharpness"] < gates.min_sharpness:
        return f"blurred (Laplacian variance {m['sharpness']:.1f} < {gates.min_sharpness})"
    return check_cell(rgb, domain, gates.dark_level, features, distance, cut) if domain is not None else None


def calibrate(images: list[np.ndarray], gates: QualityGates = DEFAULT_GATES) -> dict:
    """Pass rate and measure percentiles over ``images`` (to set and report the thresholds)."""
    rows = [measure(im, gates.dark_level) for im in images]
    reasons = [check_quality(im, gates) for im in images]
    keys = rows[0].keys() if rows else []
    pct = {k: percentile([r[k] for r in rows], [0.1, 1, 5, 50]).round(3).tolist() for k in keys}
    failed = [r for r in reasons if r]
    n = len(images)
    return {"n": n, "passed": n - len(failed), "pass_rate": 1 - len(failed) / max(1, n),
            "percentiles_0.1_1_5_50": pct, "reasons": sorted(set(r.split(" (")[0] for r in failed))}
