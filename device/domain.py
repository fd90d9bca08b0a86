"""The domain guard: does this crop, field or session look like the cells the model was trained on?

A model trained on one microscope's cells reports nonsense with full confidence on another's
(measured: an NIH-trained model calls 57% of IML *P. vivax* cells and 75% of healthy BCCD cells
parasitized). The bundle records what its training cells looked like (``manifest.domain``:
:class:`edgekit.manifest.Domain`, fitted by ``edgekit domain fit``) and this module compares new
cells with it:

- each cell crop gets a feature vector (:func:`crop_features`: size, shape and the colour of its
  stained pixels in CIE Lab, inside its rim) and a score, its Mahalanobis distance from the training cells;
- a field or a screening session gets the **median** of its cells' scores, compared with the
  threshold chosen on validation patients and off-site dev fields (``domain.field_threshold`` /
  ``domain.session_threshold``);
- the verdict is ``{"ok": bool, "score": float, "why": "<one sentence>"}``.

Light: numpy at import, OpenCV inside functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edgekit.manifest import Domain

# the features of one crop, in this order (``Domain.features`` records the names it was fitted with)
FEATURES = (
    "log_diameter",  # log of the cell's equivalent diameter in pixels (magnification)
    "fill",  # lit fraction of the crop's box (shape: a round cell fills ~0.75)
    "L_median", "a_median", "b_median",  # the cell's typical colour (CIE Lab, OpenCV 8-bit scale)
    "L_p05", "a_p95", "b_p05",  # its darkest, most magenta and most blue-purple stain
    "L_iqr",  # texture: spread of lightness inside the cell
)
DARK_LEVEL = 16  # grey level under which a crop pixel is background (NIH crops: a cell on black)
RIM = 0.15  # x the cell's diameter: the erosion kernel that leaves the cell's interior for its colour


def _cv2():
    import cv2

    return cv2


def foreground(rgb: np.ndarray, dark_level: int = DARK_LEVEL) -> np.ndarray:
    """Bool mask of the cell's pixels in a crop (everything brighter than the black background)."""
    return rgb.max(axis=2) > dark_level


def crop_features(rgb: np.ndarray) -> np.ndarray | None:
    """The feature vector (:data:`FEATURES`) of one RGB uint8 crop; None when it has no lit pixels."""
    cv2 = _cv2()
    fg = foreground(rgb)
    n = int(fg.sum())
    if n < 16:
        return None
    # colour from the cell's interior: the outer rim is where crops differ most (NIH's cut vs the
    # device's grown mask, which takes in a little of the smear background)
    k = max(3, int(RIM * 2.0 * np.sqrt(n / np.pi)) | 1)
    inner = cv2.erode(fg.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
    lab = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2LAB)[inner if inner.sum() >= 16 else fg]
    lab = lab.astype(np.float32)
    L, a, b = lab[:, 0], lab[:, 1], lab[:, 2]
    lq = np.percentile(L, [5, 25, 50, 75])
    return np.array(
        [
            np.log(2.0 * np.sqrt(n / np.pi)),
            n / fg.size,
            lq[2], np.median(a), np.median(b),
            lq[0], np.percentile(a, 95), np.percentile(b, 5),
            lq[3] - lq[1],
        ],
        dtype=np.float64,
    )


def chroma(features: np.ndarray) -> float:
    """Colourfulness of a crop's typical cell colour (Lab a, b distance from grey; 0 for grayscale)."""
    i, j = FEATURES.index("a_median"), FEATURES.index("b_median")
    return float(np.hypot(features[i] - 128.0, features[j] - 128.0))


def distances(feats: np.ndarray, domain: Domain) -> np.ndarray:
    """Mahalanobis distance of each row of ``feats`` from the training cells."""
    mean = np.asarray(domain.mean, dtype=np.float64)
    icov = np.asarray(domain.inv_cov, dtype=np.float64)
    d = np.atleast_2d(feats) - mean
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, icov, d), 0.0))


def crop_score(rgb: np.ndarray, domain: Domain) -> float | None:
    """One crop's distance from the training cells (None: no lit pixels to measure)."""
    f = crop_features(rgb)
    return None if f is None else float(distances(f, domain)[0])


def cell_scores(crops: Sequence[np.ndarray], domain: Domain) -> list[float | None]:
    """Each crop's distance from the training cells (None for a crop with no lit pixels)."""
    feats = [crop_features(c) for c in crops]
    ok = [f for f in feats if f is not None]
    d = iter(distances(np.stack(ok), domain).tolist()) if ok else iter(())
    return [None if f is None else float(next(d)) for f in feats]


def aggregate(scores: Sequence[float | None]) -> float | None:
    """A field's or session's score: the median of its cells' scores (None without any)."""
    vals = [s for s in scores if s is not None and np.isfinite(s)]
    return float(np.median(vals)) if vals else None


def verdict(score: float | None, threshold: float, what: str, n: int, min_cells: int = 1) -> dict[str, Any]:
    """``{"ok", "score", "why"}`` for a field or session of ``n`` cells with aggregate ``score``."""
    if score is None or n < min_cells:
        return {"ok": False, "score": None if score is None else round(score, 3),
                "why": f"too few cells ({n}) in this {what} to check that they look like the model's"
                       " training cells"}
    ok = score <= threshold
    why = (
        f"the cells of this {what} look like the model's training cells (median distance {score:.2f} <="
        f" {threshold:.2f})"
        if ok else
        f"the cells of this {what} do not look like the model's training cells (median distance"
        f" {score:.2f} > {threshold:.2f}: another microscope, stain or magnification); results are not"
        " validated for it"
    )
    return {"ok": bool(ok), "score": round(float(score), 3), "why": why}


NO_DOMAIN = {"ok": False, "score": None,
             "why": "this bundle records no statistics of its training cells (no manifest 'domain'), so "
                    "nothing can vouch that these cells look like them; run `edgekit domain fit`"}


def unchecked() -> dict[str, Any]:
    """The verdict when the bundle has no ``domain`` section: not vouched for."""
    return dict(NO_DOMAIN)


def crop_verdict(rgb: np.ndarray, domain: Domain | None) -> dict[str, Any]:
    """The verdict on one crop: single cells vary too much for the field threshold, so a crop is
    out of domain only when :func:`edgekit.device.quality.check_cell` rejects it (not a stained
    cell on black, or farther than ``domain.max_crop_distance`` from every training cell)."""
    from edgekit.device.quality import check_cell

    if domain is None:
        return unchecked()
    reason = check_cell(rgb, domain)
    score = crop_score(rgb, domain)
    s = None if score is None else round(score, 3)
    if reason:
        return {"ok": False, "score": s, "why": reason}
    return {"ok": True, "score": s, "why": "a stained cell within the range of the model's training cells"}


NOT_VALIDATED = "NOT VALIDATED for this microscope"


def not_validated(verdict: dict[str, Any] | None) -> str:
    """The words a count carries where the guard does not vouch for it ("" where it does, or where
    nothing was checked because there was no model)."""
    return "" if verdict is None or verdict["ok"] else f" {NOT_VALIDATED}"


def field_verdict(scores: Sequence[float | None], domain: Domain | None) -> dict[str, Any]:
    """The verdict on one field from its cells' scores."""
    if domain is None:
        return unchecked()
    return verdict(aggregate(scores), domain.field_threshold, "field", sum(s is not None for s in scores),
                   domain.min_cells)


def session_verdict(
    scores: Sequence[float | None], domain: Domain | None, what: str = "session"
) -> dict[str, Any]:
    """The verdict on a screening session (or a batch of fields: ``what``) from all its cells' scores."""
    if domain is None:
        return unchecked()
    return verdict(aggregate(scores), domain.session_threshold, what, sum(s is not None for s in scores),
                   domain.min_cells)
