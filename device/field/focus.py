# pyright: basic
"""One focus judgement for every capture path (files, folders, ``screen --fields``, camera, phone).

The measure is the sharpness of the field's strongest edges, relative to the same edges seen
through a slightly wider blur: the ratio of the root mean square gradient magnitude on the 10%
strongest edges after a Gaussian of sigma 0.5 to the same after sigma 1.2, minus 1. It is a ratio
of the field with itself, so it does not depend on stain, contrast or exposure. A blurred field's
edges are already wide, so the extra blur changes them little and the score falls.

Sensor noise adds fine gradient and made blurred noisy fields look sharp; its share of each
gradient is taken out. Where the edges were chosen on the coarse gradient itself, noise chose them
(the pixels where it happened to add to an edge, so more than its average share was left on them):
they are chosen on that gradient averaged over a box (5 of every 2nd pixel each way,
``FocusMeasure.select``). The noise's share was first estimated from its finest scale (the median
Laplacian response, white noise assumed); JPEG re-encoding removes exactly that finest noise and
keeps the coarser, which the ratio reads as edges, so blurred, noisy, re-encoded fields passed
(about half of them with noise std 4-8). The share is now read where the field holds little
else: the mean squared gradient of each plane of the blur pair on the flattest 40% of 64-px
blocks (:func:`flat_energy`, ``FocusMeasure.flat``), whatever the noise's spectrum. On a field
without noise those blocks still hold some of its own texture, taken out of both planes alike;
the floor was set with it.

One number cannot tell every soft but focused field from a blurred one: a plain BCCD field (soft
edges, fine grain on them) scored as low as an IML field blurred with sigma 2. The **profile**
tells them apart: the same ratio is taken again on the field shrunk to half size, where a field
blurred as a whole still shows clean, wide edges (its half-size ratio is about 2.5x its own),
while a soft focused field keeps its fine detail relative to its broad edges (1.4-2.3x). The
score is ``full * min(1, full / half) ** profile`` (:func:`combine`; the exponent set on
calibration fields like the floor). It costs one more pass at a quarter of the pixels; the level
of the strongest edges is found on every 2nd pixel, so the whole measure costs about what the
measure before the profile did (``focus_floor --cpu``).

Burned-in marks (a scale bar, a label, a timestamp) are drawn after the optics: sharp whatever the
focus, they carried most of IML's scores (its "50 um" bar: a sharp field scored 0.19 whole, 0.05
without its bottom rows, and a blurred copy with the bar kept sharp passed). They can be found by
their colour and steps, wherever they are (:mod:`edgekit.device.field.marks`), and their boxes left
out of the edges and the flat blocks (``FocusMeasure.marks``; a field without them scores exactly as
without it). **Not the default:** with the bar left out, IML's own soft but usable fields fall under
the one floor every microscope shares (14 of 172 dev fields refused), and on the camera's focus pulls
(``benchmarks/camera_focus.py``) the flatter score took 6 of 8 fields, two of them mid-focus (sigma
0.55 and 1.26), against 8 of 8 at their focus peak without it. The marks need a floor that is not
one absolute number for every microscope.

**A site's own floor** (:class:`FocusRule`, :func:`site_rule`): the measure is in pixels of edge
width, so one floor cannot tell soft optics in focus (IML: usable fields at 0.023-0.09 with marks left
out) from crisp optics blurred with sigma 2 (up to 0.035). A site bundle (``edgekit site adapt``)
leaves marks out and sets its floor to SITE_FLOOR_SHARE x the median score of the site's own fields;
the manifest's ``focus`` carries it, and every path (files, folders, camera, phone) judges by the
loaded bundle's rule (:func:`rule_of`). On held-out IML fields whose blurred copies keep their bar
sharp, sigma >= 2 refused: 0% (shared rule) -> 100%; of the 172 IML fields as they are, 3 refused
(PA171740 plainly blurred, PA171770 soft, PA171829) against 14 with marks left out at FOCUS_FLOOR
(``focus_floor --site``, ``focus_site.json``). The default bundle keeps the shared rule.

A site whose training fields are mostly blurred would set its floor on blur. Each field's score is
also read on a copy blurred with SITE_BLUR_SIGMA: a sharp field's falls to 0.08-0.57 of it, an
already blurred one's to 0.49-0.73 (a ratio of the field with itself, so it reads the edges' width
whatever the stain or the optics' texture). Fields that barely respond are left out of the median
when there are many of them, and where most are, the floor is FOCUS_FLOOR with marks left out
(:func:`site_rule`; ``benchmarks/focus_site_guard.py``, ``focus_site_guard.json``).

The measure can also be taken at a fixed number of pixels per cell radius (the radius from Hough
circles, :func:`edgekit.device.field.segment.cell_radius`), so that a higher magnification or a
phone zoom is not judged blurred. It is not the default: a 1.5x-interpolated sharp BCCD field and
a sigma-2 blurred NIH-like field have the same cells' size and the same edge width, so no floor
keeps both targets; at the cell scale, the sigma-2 copies of fields with large cells pass
(``benchmarks/focus_floor.py`` without ``--no-compare`` compares both; ``focus_scale.py`` per cell
radius, with the floor set on calibration halves: no radius keeps NIH-like sigma-2 copies refused).
A site bundle has what one absolute scale lacks, its own microscope's cell size: ``edgekit site
adapt`` records its fields' median cell radius (:attr:`FocusRule.radius`), and a field under its floor
whose cells are over SITE_ZOOM x that is scored again shrunk to it (``focus_zoom.py``: held-out BCCD
enlarged 1.5x refused 89% -> 22%, IML 38% -> 13%, blurred copies still 100%).

**A site that enlarges its cells** (its fields' median cell radius over SITE_ZOOM x REFERENCE_RADIUS,
:func:`site_reference`) has every field judged at the reference scale: shrunk so its cells measure
REFERENCE_RADIUS (its own radius, :meth:`FocusRule.judged_radius`), its floor set on its fields scored
so and their blur response read at that scale too. At its own pixels such a site's floor sat on wide
edges, and a field blurred as much for its cells as sigma 2 is on BCCD kept 0.67-0.74 of its score and
passed. The manifest's ``focus.reference`` carries the scale to every path (files, folders, camera,
phone); a manifest without it is judged at the fields' own pixels, as before. The default bundle does
not use it: shrunk to the reference, NIH-like fields (radius ~57 px) blurred with sigma 2 pass the
shared floor (``focus_reference.py``, ``focus_reference.json``).

Thresholds (the one place they live), set with ``benchmarks/focus_floor.py`` on the calibration
blocks of real in-focus IML, BCCD (re-encoded, noisy and plain) and NIH-like fields and their
Gaussian-blurred copies (sigma 1-4, with JPEG re-encoding or sensor noise of std 4 or 8, and copies
with noise std 0-8 and JPEG q60-95 drawn together), and measured on held-out blocks
(``benchmarks/results/focus_floor.json``, ``focus_floor_offset1.json``) and on two fresh held-out
sets never used to set anything (``focus_floor_fresh.json``, ``focus_floor_fresh2.json``: noise
std 0-8 and JPEG q60-95 drawn together, blur sigma 2-4). With marks left out, the floor was set
again on the calibration blocks of IML (with its bar kept sharp on blurred copies, and cut above
it), BCCD and NIH-like fields (as they are, and with a mark burned in), whole and in an eyepiece
disc (``focus_floor --overlays``, ``focus_floor_overlays.json``): 0.0345, within the spread of the
calibrations (with the option on).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from edgekit.device.field.marks import burned_marks, marks_mask
from edgekit.device.field.resample import resize_exact, scaled_size, shrink_area
from edgekit.device.order import median
from edgekit.device.preprocess import opencv

FOCUS_FLOOR = 0.0356  # below it a field is out of focus, whatever the session (focus_floor.json)
SESSION_RATIO = 0.25  # below this fraction of the session's sharpest recent field: out of focus
SESSION_RECENT = 10  # how many recently counted fields of the session set that reference
MAX_SIDE = 1600  # fields are measured at most this large (a 12 MP phone photo is shrunk first)
SIGMAS = (0.5, 1.2)  # the blur pair
# mean squared Sobel gradient magnitude of unit white noise after each of the blur pair
_NOISE_GAIN = (13.12, 1.518)
FLAT_BLOCK = 32  # blocks of 32 of every 2nd pixel (64 px) whose gradient energy is read as noise
STRIP_ROWS = 64  # rows of the gradient planes computed at a time (a multiple of 4; 128: same CPU, +2 MB)
STRIP_PAD = 6  # rows of context each side of a strip: the coarser Gaussian's radius (5) + Sobel's (1)
# a larger image's gradient planes are not held whole (2 float32 planes: 9.8 MB for a 1280x960 field,
# the largest item of a field run's peak) but computed twice: every 2nd pixel for the level, then the
# chosen pixels (+2 ms of CPU a field, 17 -> 19 ms); its half-size pass stays one pass
WHOLE_PLANES_PX = 640 * 480
# px (at the scale measured) a burned-in mark's box is grown by: the coarser Gaussian's radius (5),
# Sobel's (1), ``select``'s box (5 of every 2nd pixel: 4) and a JPEG block's ringing
MARK_GROW = 12


@dataclass(frozen=True)
class FocusMeasure:
    """How the score is computed. ``px_per_radius``: a field whose cells are larger than this
    radius (a higher magnification, a phone zoom) is first shrunk to it, so its edges are judged
    against its cells rather than its pixels (0: at the field's own pixels). ``noise``: the sensor
    noise's share of the gradients (estimated from the field) is taken out, so a blurred but noisy
    field does not look sharp. ``profile``: the exponent of the half-size ratio in
    :func:`combine` (0: the full-size ratio alone). ``select``: the side of the box (in every
    2nd pixel) that averages the coarser plane's gradient before the strongest edges are chosen on
    it (0: chosen on that gradient itself). Chosen on the gradient itself, noise picks them: the
    pixels where noise happened to add to an edge, so the noise left on them is more than its
    average share and a blurred noisy field looks sharp; averaged, noise no longer decides which
    pixels are taken. ``edges``: the share (%) of
    pixels taken as the strongest edges. ``flat``: with ``noise``, the noise's share is read
    from the field's flattest blocks instead of the median Laplacian: the mean gradient energy
    of each plane of the blur pair on the ``flat`` % of FLAT_BLOCK-sized blocks where the coarser
    one is lowest, whatever the noise's spectrum (0: the Laplacian estimate, white noise). JPEG
    removes the finest noise, which the Laplacian sees, and keeps the coarser noise that the
    ratio reads as edges. ``marks``: burned-in marks (scale bars, labels, timestamps:
    :mod:`edgekit.device.field.marks`) and their surroundings are left out of the edges and of the
    flat blocks; a field without marks scores as without this."""

    px_per_radius: float = 0.0
    noise: bool = False
    profile: float = 0.0
    select: int = 0
    edges: float = 5.0
    flat: float = 0.0
    marks: bool = False

    @property
    def name(self) -> str:
        cell = f"cell{self.px_per_radius:g}" if self.px_per_radius else "pixel"
        profile = f"+profile{self.profile:g}" if self.profile else ""
        box = f"+box{self.select}/{self.edges:g}%" if self.select else ""
        flat = f"+flat{self.flat:g}%" if self.flat else ""
        marks = "+marks" if self.marks else ""
        return cell + ("+noise" if self.noise else "") + profile + box + flat + marks


# the measure FOCUS_FLOOR was set for (focus_floor.json)
FOCUS_MEASURE = FocusMeasure(noise=True, profile=0.9, select=5, edges=10.0, flat=40.0, marks=False)


SITE_FLOOR_SHARE = 0.58  # a site's floor: this share of the median score of its own fields (focus_site.json)
SITE_MARKS = True  # a site's rule leaves burned-in marks out (its floor is set on that measure)
SITE_BLUR_SIGMA = 2.0  # each of a site's fields is also scored blurred by this (px), to see how it responds
# a field whose SITE_BLUR_SIGMA copy keeps more than this share of its score was already blurred: on the
# calibration halves a sharp field keeps 0.08-0.57, one blurred with sigma 2 0.49-0.73 (focus_site_guard.json)
SITE_BLURRED_RESPONSE = 0.49
SITE_SHARP_SHARE = 0.25  # under this share of a site's fields look sharp: FOCUS_FLOOR, marks left out
# over this share of a site's fields look blurred: they are left out of its median (fewer: the median holds
# them, and the response takes up to 11% of a soft site's sharp fields as blurred: IML's calibration half)
SITE_BLURRED_SHARE = 0.15
# a field whose cells' radius is over this x the site's own (its manifest's ``focus.radius``) was
# enlarged (a phone zoom, another objective): judged shrunk to the site's scale. The lowest at which no
# calibration copy blurred with sigma 2-3 passed: their radius read up to 1.3x (focus_zoom.json)
SITE_ZOOM = 1.35
# over this, a field's cell radius is misread or its optics are not the site's: judged as it is (a bound,
# not calibrated: a field shrunk far enough looks sharp whatever its focus)
SITE_ZOOM_MAX = 2.5
# the cell radius (px) a site whose cells are over SITE_ZOOM x it has its fields judged at (its manifest's
# ``focus.reference``): about IML's and BCCD's own (37.8, 40.4), the scales FOCUS_FLOOR and the site share
# were set at (site_cells_focus.json)
REFERENCE_RADIUS = 40.0


@dataclass(frozen=True)
class FocusRule:
    """The focus judgement a bundle carries (its manifest's ``focus``): the floor and whether
    burned-in marks are left out of the measure. The default is :data:`FOCUS_FLOOR` on
    :data:`FOCUS_MEASURE`, the one floor every microscope shares. A site bundle
    (``edgekit site adapt``, :func:`site_rule`) leaves marks out and sets its floor on its own
    fields, so soft optics (IML) and crisp ones each get a floor that fits them."""

    floor: float = FOCUS_FLOOR
    marks: bool = FOCUS_MEASURE.marks
    source: str = ""  # how the floor was set (a site rule: on how many fields)
    radius: float = 0.0  # the site's median cell radius (px) on its own fields (0: none, no zoom check)
    reference: float = 0.0  # the cell radius (px) fields are judged at (0: at their own pixels)

    def __post_init__(self) -> None:
        if not 0 < self.floor < 1:
            raise ValueError(f"focus floor must be in (0, 1), not {self.floor!r}")
        for name in ("radius", "reference"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e4:
                raise ValueError(f"focus {name} must be a number in [0, 1e4), not {value!r}")

    @classmethod
    def from_dict(cls, focus: dict | None) -> FocusRule:
        """The rule of a manifest's ``focus`` (None or empty: :data:`DEFAULT_RULE`; without
        ``reference``, judged at the fields' own pixels, as before it was recorded)."""
        if not focus:
            return DEFAULT_RULE
        return cls(**{k: focus[k] for k in ("floor", "marks", "source", "radius", "reference") if k in focus})

    @property
    def measure(self) -> FocusMeasure:
        return replace(FOCUS_MEASURE, marks=self.marks)

    def score(self, rgb: np.ndarray, marks: list | None = None, radius: float | None = None) -> float:
        """The field's focus score under this rule's measure (``marks``: as for :func:`focus_score`).
        With a ``reference``, the field is judged shrunk so its cells measure that radius
        (:meth:`judged_radius`; ``radius``: its cells' radius when the caller measured it). Else, with a
        site's ``radius``, a field under the floor whose cells are over SITE_ZOOM x the site's is scored
        again shrunk to the site's scale, and the higher score counts: an enlarged sharp field has
        wider edges per pixel, not a blurred focus."""
        if self.reference:
            measure = replace(self.measure, px_per_radius=self.reference)
            return focus_score(rgb, self.judged_radius(rgb, radius), measure, marks)
        score = focus_score(rgb, measure=self.measure, marks=marks)
        return max(score, self.zoomed_score(rgb, radius)) if self.radius and score < self.floor else score

    def judged_radius(self, rgb: np.ndarray, radius: float | None = None) -> float:
        """The cell radius (px) ``rgb`` is shrunk from to the ``reference``: the site's (its fields'
        median) while the field's own (``radius``, else :func:`~edgekit.device.field.segment.cell_radius`)
        reads within SITE_ZOOM of it (one microscope, one scale: a field's own read varies by 10-15%,
        and the score with it), or is unread or over SITE_ZOOM_MAX x it (misread, or not the site's
        optics: a field shrunk far enough looks sharp whatever its focus); the field's own otherwise
        (a phone zoom, another objective)."""
        radius = _radius_of(rgb, radius)
        if not self.radius:
            return radius
        sites = self.radius / SITE_ZOOM <= radius <= SITE_ZOOM * self.radius
        return self.radius if sites or not 0 < radius <= SITE_ZOOM_MAX * self.radius else radius

    def zoomed_score(self, rgb: np.ndarray, radius: float | None = None) -> float:
        """The score of ``rgb`` shrunk to the site's cell radius when its cells (``radius``, else
        measured) are SITE_ZOOM to SITE_ZOOM_MAX x that (the marks found again at that size); 0.0
        otherwise."""
        radius = _radius_of(rgb, radius)
        if not SITE_ZOOM * self.radius < radius <= SITE_ZOOM_MAX * self.radius:
            return 0.0
        f = self.radius / radius
        small = resize_exact(rgb, scaled_size(rgb.shape, f))
        return focus_score(small, measure=self.measure)

    def reason(self, score: float, session_best: float | None = None) -> str | None:
        """:func:`focus_reason` at this rule's floor."""
        return focus_reason(score, session_best, self.floor)


DEFAULT_RULE = FocusRule()


def rule_of(classifier: object) -> FocusRule:
    """The focus rule of a loaded classifier's bundle (its manifest's ``focus``); the shared one for
    none, or for a stand-in without a manifest."""
    focus = getattr(getattr(classifier, "manifest", None), "focus", None)
    return FocusRule.from_dict(focus if isinstance(focus, dict) else None)


def site_reference(radius: float, reference: float = REFERENCE_RADIUS) -> float:
    """The cell radius a site whose fields' median cell radius is ``radius`` judges focus at:
    ``reference`` when its cells are over SITE_ZOOM x that (an enlarging microscope: a blur is
    judged against its cells, not its pixels), else 0.0 (its own pixels, as before)."""
    return reference if reference and radius > SITE_ZOOM * reference else 0.0


def site_rule(scores: list[float], blurred: list[float] | None = None,
              share: float = SITE_FLOOR_SHARE, radius: float = 0.0, reference: float = 0.0) -> FocusRule:
    """The rule a site bundle carries: marks left out, the floor ``share`` x the median score of the
    site's sharp fields (``scores``, measured with marks left out; the median is robust to the few
    blurred ones a site's fields hold). A sigma-2 blur takes a field to 0.32-0.60 of its own score
    (IML), so the share sits between that and the spread of a site's sharp fields. ``blurred``: the
    same fields' scores after a Gaussian of SITE_BLUR_SIGMA (:func:`sharp_scores`): fields that were
    already blurred are left out of the median when they are over SITE_BLURRED_SHARE of them, and
    where they are most of them (:func:`looks_blurred`) the floor is FOCUS_FLOOR, so blurred
    training fields cannot lower it to blur (None: every field is taken as sharp). ``radius``: the
    median cell radius of the site's fields (:attr:`FocusRule.radius`; 0: none); ``reference``: the
    cell radius the scores were measured at (:func:`site_reference`; 0: the fields' own pixels)."""
    if not scores:
        raise ValueError("a site focus floor needs the scores of the site's fields")
    sharp = scores if blurred is None else sharp_scores(scores, blurred)
    at = f", cells judged at {reference:g} px radius" if reference else ""
    if len(sharp) >= (1 - SITE_BLURRED_SHARE) * len(scores):
        sharp = scores
    elif _too_few_sharp(len(sharp), len(scores)):
        source = f"the shared floor, no marks: {len(sharp)} of {len(scores)} site fields look sharp{at}"
        return FocusRule(floor=FOCUS_FLOOR, marks=SITE_MARKS, source=source, radius=round(radius, 1),
                         reference=reference)
    floor = round(share * float(median(sharp)), 4)
    left_out = f", {len(scores) - len(sharp)} left out as blurred" if len(sharp) < len(scores) else ""
    source = f"{share:g} x the median focus score of {len(sharp)} site fields{left_out}, no marks{at}"
    return FocusRule(floor=floor, marks=SITE_MARKS, source=source, radius=round(radius, 1),
                     reference=reference)


def looks_blurred(scores: list[float], blurred: list[float]) -> bool:
    """Whether under SITE_SHARP_SHARE of a site's fields (or none) respond to a blur as sharp fields
    do (:func:`sharp_scores`): they cannot say what in focus looks like there."""
    return _too_few_sharp(len(sharp_scores(scores, blurred)), len(scores))


def _too_few_sharp(sharp: int, fields: int) -> bool:
    return not sharp or sharp < SITE_SHARP_SHARE * fields


def sharp_scores(scores: list[float], blurred: list[float]) -> list[float]:
    """The ``scores`` of the fields that respond to a blur as sharp ones do: their copy blurred with
    SITE_BLUR_SIGMA (``blurred``, in the same order) keeps at most SITE_BLURRED_RESPONSE of their
    score. A field already blurred has wide edges, so a further blur changes it little; the ratio
    is the field's with itself, so it holds for soft and crisp optics alike."""
    if len(scores) != len(blurred):
        raise ValueError(f"{len(scores)} site field scores but {len(blurred)} blurred ones")
    return [s for s, b in zip(scores, blurred, strict=True) if s > 0 and b <= SITE_BLURRED_RESPONSE * s]


def focus_score(rgb: np.ndarray, radius: float | None = None, measure: FocusMeasure | None = None,
                marks: list | None = None) -> float:
    """The field's focus score (see the module docstring and :class:`FocusMeasure`; default
    :data:`FOCUS_MEASURE`): about 0.03-0.42 in focus (soft BCCD fields lowest), under 0.036 for a
    Gaussian blur of sigma 2 px or more. ``radius``: the cells' radius in pixels when the caller knows it
    (else estimated, if the measure needs it: :func:`edgekit.device.field.segment.cell_radius`).
    ``marks``: with ``measure.marks``, the burned-in marks' boxes when the caller knows them (a
    camera remembers them across frames), instead of those found on this field."""
    m = measure or FOCUS_MEASURE
    return combine(*edge_ratios(rgb, radius, m, marks), m.profile)


def combine(full: float, half: float | None, profile: float) -> float:
    """The score from the edge ratio at the field's pixels and at half size: ``full`` times
    ``min(1, full / half) ** profile`` (see the module docstring); ``full`` alone without a profile.
    The profile only ever lowers the score: on a heavily blurred, noisy field the half-size ratio,
    its noise taken out, can come out below the full-size one."""
    if not profile or half is None or full <= 0:
        return full
    return full * min(1.0, full / max(half, 1e-3)) ** profile


def _radius_of(rgb: np.ndarray, radius: float | None) -> float:
    """``radius`` when the caller measured it, else the field's cells' radius (``cell_radius``)."""
    if radius is not None:
        return radius
    from edgekit.device.field.segment import cell_radius

    return cell_radius(_as_rgb(rgb))


def _as_rgb(img: np.ndarray) -> np.ndarray:
    """``img`` as RGB (a grey image's one channel three times), for what reads colour."""
    if img.ndim == 3:
        return img
    cv2 = opencv()
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)


def edge_ratios(rgb: np.ndarray, radius: float | None = None, measure: FocusMeasure | None = None,
                marks: list | None = None) -> tuple[float, float | None]:
    """(:func:`edge_ratio` of the field at the scale ``measure`` works at, the same at half that
    size, or None when the measure has no profile)."""
    cv2 = opencv()
    m = measure or FOCUS_MEASURE
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    scale = MAX_SIDE / max(gray.shape[:2])
    if m.px_per_radius > 0:
        radius = _radius_of(rgb, radius)
        if radius > 0:
            scale = min(scale, m.px_per_radius / radius)
    if scale < 1:
        gray = shrink_area(gray, scaled_size(gray.shape, scale))
    if not m.marks:
        boxes = []
    elif marks is not None:
        boxes = marks
    else:
        boxes = burned_marks(_as_rgb(rgb))
    scale = min(scale, 1.0)
    full = edge_ratio(gray, m, marks_mask(boxes, gray.shape, scale, MARK_GROW) if boxes else None)
    if not m.profile or full <= 0:
        return full, None
    half = half_size(gray)
    return full, edge_ratio(half, m, marks_mask(boxes, half.shape, scale / 2, MARK_GROW) if boxes else None)


def half_size(gray: np.ndarray) -> np.ndarray:
    """``gray`` as float32 at half size: exactly ``cv2.resize(gray.astype(np.float32), None,
    fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)``, without the whole float copy. Each output row
    is the mean of two input rows, so strips that start at a multiple of 4 rows give every row as
    the whole would (the last strip's odd row count then rounds as the whole field's does; under 4
    rows left over join the strip before, as one row alone would shrink to none)."""
    cv2 = opencv()
    h = gray.shape[0]
    starts = list(range(0, h - 4 if h > STRIP_ROWS else 1, STRIP_ROWS))
    parts = [cv2.resize(np.asarray(gray[a:b], np.float32), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
             for a, b in zip(starts, [*starts[1:], h], strict=True)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def edge_ratio(g: np.ndarray, measure: FocusMeasure | None = None, marks: np.ndarray | None = None) -> float:
    """The edge sharpening ratio of grey image ``g`` (uint8 or float32) at its own pixels: the
    gradient on the strongest edges after the blur pair's finer Gaussian over the same after its
    coarser one, minus 1; with ``measure.noise``, the sensor noise's share of each taken out.
    ``marks`` (bool, ``g``'s size): pixels left out (burned-in marks)."""
    cv2 = opencv()
    m = measure or FOCUS_MEASURE
    whole = g.shape[0] * g.shape[1] <= WHOLE_PLANES_PX
    fine2, coarse2 = gradient_planes(g, 1 if whole else 2)
    fine_s, coarse_s = (fine2[::2, ::2], coarse2[::2, ::2]) if whole else (fine2, coarse2)
    # the level is set, and with ``select`` the edges are chosen, on every 2nd pixel each way
    sample = np.sqrt(coarse_s)
    if m.select:
        box = np.full(m.select, 1.0 / m.select, np.float32)
        sample = cv2.sepFilter2D(sample, -1, box, box)
    kept = None if marks is None else ~marks[::2, ::2]
    flat = sample.ravel() if kept is None else sample[kept]
    k = min(int(flat.size * (100 - m.edges) / 100), flat.size - 1)
    level = float(np.partition(flat, k)[k]) if flat.size else 0.0
    if level <= 1e-3:  # no edges at all: a blank field (the blank check says so first)
        return 0.0
    sel = None
    if m.select:
        chosen = (sample >= level).view(np.uint8)  # a mask for OpenCV: nonzero where chosen
        sel = cv2.resize(chosen, g.shape[::-1], interpolation=cv2.INTER_NEAREST).view(bool)
    sample = flat = chosen = None  # memory: what the second pass does not need is freed first
    noise = _noise_energy(g, fine_s, coarse_s, m, kept) if m.noise else (0.0, 0.0)
    if whole:
        f_sel, c_sel = _chosen(fine2, coarse2, level, sel, marks)
    else:
        fine2 = coarse2 = fine_s = coarse_s = None
        f_sel, c_sel = _chosen_again(g, level, sel, marks)
    if not m.noise:  # the first measure: the ratio of the mean gradients
        f_mean, c_mean = (float(np.sqrt(x).mean(dtype=np.float64)) for x in (f_sel, c_sel))
        return f_mean / max(c_mean, 1e-6) - 1.0
    f_noise, c_noise = noise
    f2 = float(f_sel.mean(dtype=np.float64)) - f_noise  # noise taken out
    c2 = float(c_sel.mean(dtype=np.float64)) - c_noise
    return float(np.sqrt(max(f2, 1e-6) / max(c2, 1e-6))) - 1.0


def _noise_energy(g: np.ndarray, fine_s: np.ndarray, coarse_s: np.ndarray, m: FocusMeasure,
                  kept: np.ndarray | None) -> tuple[float, float]:
    """The sensor noise's mean squared gradient in each plane of the blur pair (``fine_s``,
    ``coarse_s``: every 2nd pixel of the planes): on the flattest blocks, or from the Laplacian."""
    if m.flat:
        return flat_energy(fine_s, coarse_s, m.flat, kept)
    var = _noise_std(np.asarray(g, np.float32)) ** 2
    return _NOISE_GAIN[0] * var, _NOISE_GAIN[1] * var


def flat_energy(fine2: np.ndarray, coarse2: np.ndarray, share: float,
                kept: np.ndarray | None = None) -> tuple[float, float]:
    """Mean of the squared gradients ``fine2`` and ``coarse2`` on the ``share`` % of
    FLAT_BLOCK-sized blocks where ``coarse2`` is lowest: the noise's energy in each plane, at
    whatever scale JPEG left it (the flattest blocks hold little else). Block means by numpy: the
    same on any number of threads. ``kept`` (bool, the planes' size): blocks with any pixel not
    kept are left out (a mark's filled box is flat, but holds no noise)."""
    b = FLAT_BLOCK
    h, w = coarse2.shape[0] // b, coarse2.shape[1] // b
    if not h or not w:
        return 0.0, 0.0
    blocks = [x[:h * b, :w * b].reshape(h, b, w, b).mean(axis=(1, 3), dtype=np.float64).ravel()
              for x in (fine2, coarse2)]
    if kept is not None:
        usable = kept[:h * b, :w * b].reshape(h, b, w, b).all(axis=(1, 3)).ravel()
        if usable.any():
            blocks = [x[usable] for x in blocks]
    n = max(1, int(blocks[1].size * share / 100))
    low = np.argpartition(blocks[1], n - 1)[:n]
    return float(blocks[0][low].mean()), float(blocks[1][low].mean())


def _noise_std(g: np.ndarray) -> float:
    """Sensor noise std (grey levels): the median absolute response of a Laplacian-like mask that
    cancels smooth shading (Immerkaer's), which edges, being few, barely move; taken at every 6th
    pixel each way (plenty for a median). The mask is separable: rows first, then columns."""
    rows = g[:-2:6] - 2 * g[1:-1:6] + g[2::6]  # the second difference down, every 6th row
    r = rows[:, :-2:6] - 2 * rows[:, 1:-1:6] + rows[:, 2::6]  # then across, every 6th column
    return float(median(np.abs(r))) / (0.6745 * 6.0)


def _chosen(fine2: np.ndarray, coarse2: np.ndarray, level: float, sel: np.ndarray | None,
            marks: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The squared gradients of the strongest edges, in row order: where ``sel`` (bool) is set, else
    where ``coarse2`` reaches ``level`` squared; never on ``marks``."""
    chosen = coarse2 >= level * level if sel is None else sel  # numpy's sums, not OpenCV's: any thread count
    if marks is not None:
        chosen = chosen & ~marks
    return fine2[chosen], coarse2[chosen]


def _chosen_again(g: np.ndarray, level: float, sel: np.ndarray | None, marks: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_chosen` of the whole planes of ``g``, from its gradients computed again strip by strip:
    the same values in the same order."""
    parts: tuple[list, list] = ([], [])
    for a, b, planes in _gradient_strips(g):
        chosen = _chosen(*planes, level, None if sel is None else sel[a:b],
                         None if marks is None else marks[a:b])
        planes = None  # freed before the next strip is computed
        for part, values in zip(parts, chosen, strict=True):
            part.append(values)
    return np.concatenate(parts[0]), np.concatenate(parts[1])


def gradient_planes(g: np.ndarray, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The squared Sobel gradient magnitude of ``g`` (as float32) after each of the blur pair, as
    float32 planes of every ``step``-th pixel each way (STRIP_ROWS is a multiple of ``step``): exactly
    those of the whole image, computed STRIP_ROWS rows at a time (:func:`_gradient_strips`), so the
    blurred and derived planes are never held whole (a 1280x960 field, tracemalloc: the whole measure
    peaked at 25 MB, in 128-row strips at 14, in 64-row strips computed twice at 6.3)."""
    h, w = g.shape[:2]
    shape = (-(-h // step), -(-w // step))
    planes = (np.empty(shape, np.float32), np.empty(shape, np.float32))
    for a, _, strips in _gradient_strips(g, step):
        for plane, rows in zip(planes, strips, strict=True):
            plane[a // step:a // step + rows.shape[0]] = rows
        strips = rows = None  # freed before the next strip is computed
    return planes


def _gradient_strips(g: np.ndarray, step: int = 1
                     ) -> Iterator[tuple[int, int, tuple[np.ndarray, np.ndarray]]]:
    """(first row, end row, the squared gradient planes of those rows after each of the blur pair, of
    every ``step``-th pixel each way), STRIP_ROWS rows at a time from strips with STRIP_PAD rows of
    context each side. Inside the image a strip's rows see the same pixels as the whole would; at its
    top and bottom the strip's border is the image's. The Sobel sees only the blurred rows it needs
    (one each side: 9% of the measure's CPU with the pad's 6 rows instead of 8 before)."""
    cv2 = opencv()
    h = g.shape[0]
    for a in range(0, h, STRIP_ROWS):
        b = min(h, a + STRIP_ROWS)
        lo, hi = max(0, a - STRIP_PAD), min(h, b + STRIP_PAD)
        top, end = max(lo, a - 1), min(hi, b + 1)
        x = np.asarray(g[lo:hi], np.float32)
        planes = tuple(_grad2(cv2.GaussianBlur(x, (0, 0), s)[top - lo:end - lo], a - top, b - top, step)
                       for s in SIGMAS)
        x = None  # nothing of this strip is held here while the next one is computed
        yield a, b, planes  # type: ignore[misc]


def _grad2(g: np.ndarray, a: int = 0, b: int | None = None, step: int = 1) -> np.ndarray:
    """Squared Sobel gradient magnitude (the energies need no root) of rows ``a`` to ``b`` of ``g``, at
    every ``step``-th pixel each way (a view: squaring only those, strided, cost more). Squared and
    summed by numpy, in place: cv2.magnitude's result depends on its buffers' alignment (up to 8e-6),
    so the same field could score differently."""
    cv2 = opencv()
    dx = cv2.Sobel(g, cv2.CV_32F, 1, 0)[a:b]
    dy = cv2.Sobel(g, cv2.CV_32F, 0, 1)[a:b]
    np.multiply(dx, dx, out=dx)
    np.multiply(dy, dy, out=dy)
    return np.add(dx, dy, out=dx)[::step, ::step]


def focus_reason(score: float, session_best: float | None = None, floor: float = FOCUS_FLOOR) -> str | None:
    """"out of focus (...)" when ``score`` is below ``floor`` (a site bundle's own: :class:`FocusRule`),
    or well below ``session_best`` (the sharpest recent field of the same session); else None."""
    if score < floor:
        return f"out of focus (sharpness {score:.3f} < {floor:g})"
    if session_best and score < SESSION_RATIO * session_best:
        return (f"out of focus (sharpness {score:.3f}, well below this session's recent fields: "
                f"{session_best:.3f}); focus and take it again")
    return None
