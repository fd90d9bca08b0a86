# pyright: basic
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
- the verdict is ``{"ok": bool, "score": float, "why": "<one sentence>", "kind": <a key of BANNERS or
  "like">}``; ``kind`` says which check decided, so a one-line banner names the real reason.

Light: numpy at import, OpenCV inside functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.device.lab import rgb_to_lab
from edgekit.device.order import median, percentile
from edgekit.device.preprocess import opencv

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


def foreground(rgb: np.ndarray, dark_level: int = DARK_LEVEL) -> np.ndarray:
    """Bool mask of the cell's pixels in a crop (everything brighter than the black background)."""
    return rgb.max(axis=2) > dark_level


# the percentiles each Lab channel contributes to the features (linear interpolation, numpy's default)
_L_PCT, _A_PCT, _B_PCT = (5.0, 25.0, 50.0, 75.0), (50.0, 95.0), (5.0, 50.0)
_HIST_EXACT = 1 << 24  # calcHist counts in float32: exact below this many pixels


def _percentiles(hist: np.ndarray, n: int, pct: tuple[float, ...], dtype: type = np.float64) -> np.ndarray:
    """``np.percentile(values, pct)`` of ``n`` uint8 values given as a 256-bin histogram: the order
    statistics come from the cumulative counts, interpolated exactly as numpy's "linear" method does
    (virtual index (n - 1) q, lerp from the nearer end) in ``dtype``: float64 for a list of
    percentiles, float32 for one (numpy keeps a float32 array's type for a scalar percentile)."""
    cdf = np.cumsum(hist.ravel().astype(np.int64))
    q = np.asarray(pct) / 100.0
    h = (n - 1) * q  # numpy's virtual index for "linear"
    lo = np.floor(h)
    t = h - lo
    lo_i = lo.astype(np.int64)
    a = np.searchsorted(cdf, lo_i, side="right").astype(dtype)  # value of the lo-th smallest
    b = np.searchsorted(cdf, np.minimum(lo_i + 1, n - 1), side="right").astype(dtype)
    d = b - a
    return np.where(t >= 0.5, b - d * (1.0 - t).astype(dtype), a + d * t.astype(dtype))


def crop_features(rgb: np.ndarray) -> np.ndarray | None:
    """The feature vector (:data:`FEATURES`) of one RGB uint8 crop; None when it has no lit pixels.

    OpenCV masks and per-channel 256-bin histograms throughout (no boolean indexing, no sort):
    equal to the straightforward numpy version (tests/test_fast_equivalence.py) at about 1/10 of its cost."""
    cv2 = opencv()
    rgb = np.ascontiguousarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb[..., 0].size >= _HIST_EXACT:
        return _crop_features_numpy(rgb)
    # the ignore: a scalar operand is valid, cv2's stub takes arrays only
    fg = cv2.compare(cv2.inRange(rgb, (0, 0, 0), (DARK_LEVEL,) * 3), 0, cv2.CMP_EQ)  # 255: a lit channel # pyright: ignore[reportCallIssue, reportArgumentType]
    n = cv2.countNonZero(fg)
    if n < 16:
        return None
    # colour from the cell's interior: the outer rim is where crops differ most (NIH's cut vs the
    # device's grown mask, which takes in a little of the smear background)
    k = max(3, int(RIM * 2.0 * np.sqrt(n / np.pi)) | 1)
    inner = cv2.erode(fg, np.ones((k, k), np.uint8))
    m = cv2.countNonZero(inner)
    mask, m = (inner, m) if m >= 16 else (fg, n)
    # Lab of the mask's bounding box only: the histograms see the same pixels
    x, y, w, h = cv2.boundingRect(mask)
    mask = mask[y : y + h, x : x + w]
    lab = rgb_to_lab(rgb[y : y + h, x : x + w])
    # L's four percentiles in float64 (np.percentile of a list), a's and b's tails in float32 (of a
    # scalar); the medians are exact in either
    L, a, b = (_percentiles(cv2.calcHist([lab], [c], mask, [256], [0, 256]), m, pct, dtype)
               for c, pct, dtype in ((0, _L_PCT, np.float64), (1, _A_PCT, np.float32),
                                     (2, _B_PCT, np.float32)))
    return np.array(
        [np.log(2.0 * np.sqrt(n / np.pi)), n / fg.size, L[2], a[0], b[1], L[0], a[1], b[0], L[3] - L[1]],
        dtype=np.float64,
    )


def _crop_features_numpy(rgb: np.ndarray) -> np.ndarray | None:
    """:func:`crop_features` for what the histogram route does not take (not 3-channel uint8, or
    more pixels than float32 counts exactly)."""
    cv2 = opencv()
    fg = foreground(rgb)
    n = int(fg.sum())
    if n < 16:
        return None
    k = max(3, int(RIM * 2.0 * np.sqrt(n / np.pi)) | 1)
    inner = cv2.erode(fg.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
    lab = rgb_to_lab(np.ascontiguousarray(rgb))[inner if inner.sum() >= 16 else fg]
    lab = lab.astype(np.float32)
    L, a, b = lab[:, 0], lab[:, 1], lab[:, 2]
    lq = percentile(L, [5, 25, 50, 75])
    return np.array(
        [
            np.log(2.0 * np.sqrt(n / np.pi)),
            n / fg.size,
            lq[2], median(a), median(b),
            lq[0], percentile(a, 95), percentile(b, 5),
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
    return feature_scores([crop_features(c) for c in crops], domain)


def feature_scores(feats: Sequence[np.ndarray | None], domain: Domain) -> list[float | None]:
    """:func:`cell_scores` of crops whose :func:`crop_features` the caller has already."""
    ok = [f for f in feats if f is not None]
    d = iter(distances(np.stack(ok), domain).tolist()) if ok else iter(())
    return [None if f is None else float(next(d)) for f in feats]


def border_lit(rgb: np.ndarray, dark_level: int = DARK_LEVEL) -> float:
    """Fraction of the image's outer one-pixel frame brighter than the background level. A cell
    cropped on black touches its box only at a few points; a field, a photo or noise is lit all round."""
    frame = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])  # only the frame's pixels
    lit = frame.max(axis=1) > dark_level if rgb.ndim == 3 else frame > dark_level
    return float(lit.mean())


def single_cell_reason(height: int, width: int, lit: float, manifest: Any) -> str | None:
    """Why an image given as a whole field is a single cell crop (:func:`check_cell`'s rule turned
    round): the size of the model's training crops (:func:`edgekit.device.sizes.outside`) and their
    dark border (``lit``: its :func:`border_lit`, at most ``max_border_lit``). None when the bundle
    records neither, or when the image is not like them (a field: larger, or lit all round)."""
    from edgekit.device.sizes import outside

    domain, sizes = getattr(manifest, "domain", None), getattr(manifest, "image_sizes", None)
    if domain is None or sizes is None or lit > domain.max_border_lit or outside(height, width, sizes):
        return None
    return (f"a single cell on a black background, not a whole field ({width}x{height} px, {lit:.0%} of the "
            "border lit, like the model's training crops); pass cell crops to `edgekit classify`, or to "
            "`edgekit screen` without --fields")


def check_cell(rgb: np.ndarray, domain: Domain, dark_level: int = DARK_LEVEL,
               features: np.ndarray | None = None, distance: float | None = None,
               cut: bool = False) -> str | None:
    """Reject an image that is plainly not a cell like the bundle's training cells: not a single
    cell on black (a whole field, a photo, noise), colourless (a grayscale copy of a stained cell),
    or far outside every training cell's size, shape and colour. None when it passes.
    ``features`` and their ``distance``: when the caller has them already. ``cut``: the crop is a
    cell the finder cut from a field, not a file given as a crop (told apart only in the reason)."""
    lit = border_lit(rgb, dark_level)
    if lit > domain.max_border_lit:
        return _lit_border(lit, domain, cut)
    f = crop_features(rgb) if features is None else features
    if f is None:
        return "no cell pixels to classify"
    c = chroma(f)
    if c < domain.min_chroma:
        return _colourless(c, domain)
    d = float(distances(f, domain)[0]) if distance is None or features is None else distance
    if domain.max_crop_distance is not None and d > domain.max_crop_distance:
        return (f"does not look like a cell the model was trained on (distance {d:.1f} >"
                f" {domain.max_crop_distance:.1f} in size, shape and colour)")
    return None


def _lit_border(lit: float, domain: Domain, cut: bool) -> str:
    """:func:`check_cell`'s reason for a crop lit along its border: a file given as a crop is
    pointed to `edgekit field`; a cell the finder cut is said to fill its box (IML/BCCD: a cell cut
    off by the field's edge, or cells run together), with no advice for the user's files."""
    rule = f"{lit:.0%} of the border is lit, training crops <= {domain.max_border_lit:.0%}"
    if cut:
        return (f"not a single cell on a black background ({rule}): the cell found fills its box, as a "
                "cell cut off by the field's edge or cells run together do")
    return f"not a single cell on a black background ({rule}); pass whole fields to `edgekit field`"


def _colourless(c: float, domain: Domain) -> str:
    return (f"no stain colour (chroma {c:.1f} < {domain.min_chroma:.1f}): a grayscale image or a stain too"
            " pale for this model, which was trained on colour-stained cells")


def colourless_field(feats: Sequence[np.ndarray | None], domain: Domain) -> str | None:
    """:func:`check_cell`'s colour rule for a whole field, from every cell's :func:`crop_features`
    (None: no lit pixels): the reason when the median chroma of its cells is under the bundle's
    ``min_chroma`` (a grayscale field, whose every crop screening refuses), else None. All its
    cells, not a sample: a pale field's chroma is quantized (1, 1.41, 2.24...) and a 16-cell
    sample's median flipped with one cell (IML PA171696-700), all of them only with 6 to 26."""
    c = aggregate([chroma(f) for f in feats if f is not None])
    return _colourless(c, domain) if c is not None and c < domain.min_chroma else None


def aggregate(scores: Sequence[float | None]) -> float | None:
    """A field's or session's score: the median of its cells' scores (None without any)."""
    vals = [float(s) for s in scores if s is not None and np.isfinite(s)]
    return float(median(vals)) if vals else None


def verdict(score: float | None, threshold: float, what: str, n: int, min_cells: int = 1) -> dict[str, Any]:
    """``{"ok", "score", "why"}`` for a field or session of ``n`` cells with aggregate ``score``."""
    if score is None or n < min_cells:
        return {"ok": False, "score": None if score is None else round(score, 3),
                "why": f"too few cells ({n}) in this {what} to check that they look like the model's"
                       " training cells", "kind": "few"}
    ok = score <= threshold
    why = (
        f"the cells of this {what} look like the model's training cells: {guard_measure(score, threshold)}"
        if ok else
        f"the cells of this {what} do not look like the model's training cells (another microscope, stain"
        f" or magnification): {guard_measure(score, threshold)}; results are not validated for it"
    )
    return {"ok": bool(ok), "score": round(float(score), 3), "why": why, "kind": "like" if ok else "unlike"}


def guard_measure(score: float, threshold: float) -> str:
    """A field's or session's median distance (``score``) over its ``threshold``, in words a field
    worker reads and numbers an engineer can check (``a median 6.40 standard deviations ... (limit
    3.93)``): the distance is Mahalanobis, in the training cells' standard deviations."""
    return f"a median {score:.2f} {GUARD_UNIT} (limit {threshold:.2f})"


# what the guard's distance measures (the features ``manifest.domain`` records the training cells by)
GUARD_UNIT = "standard deviations from the training cells in size, shape and stain colour"


NO_DOMAIN = {"ok": False, "score": None,
             "why": "this bundle records no statistics of its training cells (no manifest 'domain'), so "
                    "nothing can vouch that these cells look like them; run `edgekit site domain fit`",
             "kind": "unchecked"}

# the one line an overlay (file, camera, phone page) prints under a result that is not vouched for, by
# the verdict's ``kind``: the sentence in ``why`` is too long for a bar across a field
BANNERS = {
    "unlike": "NOT VALIDATED FOR THIS MICROSCOPE: cells unlike the model's training cells",
    "few": "NOT VALIDATED: too few cells to check this field",
    "unchecked": "NOT VALIDATED: this bundle cannot check its cells",
    "gate": "NOT VALIDATED: this site bundle failed its own test fields",
    "cell": "NOT VALIDATED: not a stained cell like the training cells",
}


def banner(verdict: dict[str, Any]) -> str:
    """The one-line banner for a verdict that does not vouch (verdicts stored before ``kind``
    existed were all the guard's)."""
    return BANNERS.get(verdict.get("kind", "unlike"), BANNERS["unlike"])


def unchecked() -> dict[str, Any]:
    """The verdict when the bundle has no ``domain`` section: not vouched for."""
    return dict(NO_DOMAIN)


def crop_verdict(rgb: np.ndarray, domain: Domain | None) -> dict[str, Any]:
    """The verdict on one crop: single cells vary too much for the field threshold, so a crop is
    out of domain only when :func:`check_cell` rejects it (not a stained
    cell on black, or farther than ``domain.max_crop_distance`` from every training cell)."""
    if domain is None:
        return unchecked()
    reason = check_cell(rgb, domain)
    score = crop_score(rgb, domain)
    s = None if score is None else round(score, 3)
    if reason:
        return {"ok": False, "score": s, "why": reason, "kind": "cell"}
    return {"ok": True, "score": s, "why": "a stained cell within the range of the model's training cells",
            "kind": "like"}


NOT_VALIDATED = "NOT VALIDATED for this microscope"


def not_validated(verdict: dict[str, Any] | None) -> str:
    """The words a count carries where the guard does not vouch for it ("" where it does, or where
    nothing was checked because there was no model)."""
    return "" if verdict is None or verdict["ok"] else f" {NOT_VALIDATED}"


def gated(result: dict[str, Any], domain: Domain) -> dict[str, Any]:
    """``result``, unless the bundle's site gate failed: then not vouched for, with its numbers (a
    site bundle that failed its own test never vouches, whatever its cells look like)."""
    if domain.gate is None or domain.gate.passed:
        return result
    return {"ok": False, "score": result["score"],
            "why": f"{domain.gate.summary()}: results of this site bundle are not validated", "kind": "gate"}


def field_verdict(scores: Sequence[float | None], domain: Domain | None) -> dict[str, Any]:
    """The verdict on one field from its cells' scores."""
    if domain is None:
        return unchecked()
    n = sum(s is not None for s in scores)
    return gated(verdict(aggregate(scores), domain.field_threshold, "field", n, domain.min_cells), domain)


def session_verdict(
    scores: Sequence[float | None], domain: Domain | None, what: str = "session"
) -> dict[str, Any]:
    """The verdict on a screening session (or a batch of fields: ``what``) from all its cells' scores."""
    if domain is None:
        return unchecked()
    n = sum(s is not None for s in scores)
    return gated(verdict(aggregate(scores), domain.session_threshold, what, n, domain.min_cells), domain)
