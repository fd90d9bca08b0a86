# pyright: basic
"""A live microscope camera: which frames are fields worth counting, and each field counted once.

A health worker pans across a smear, stops on a field, focuses, moves on. Every frame is measured
on a small grey thumbnail (cheap, so the preview keeps its frame rate):

- **moving**: the mean absolute change from the previous frame is above ``motion``;
- **blurred**: the focus measure (the field quality gate's, Laplacian variance per unit of
  contrast) is below the gate's threshold; a moving frame also counts as blurred when it is below
  ``blur_ratio`` of the last still view's (smears differ in texture, so motion blur is judged
  against the view the camera just had, never against another field);
- **settled**: ``settle`` consecutive still, sharp frames after the view last moved, the last one
  within 10% of the sharpest of them (not captured half-way through focusing). The field is
  captured once, and nothing more is captured until the view moves again (or a key asks for it:
  :meth:`FieldCapture.request`).

A captured field that overlaps one captured earlier in the session (image registration by phase
correlation of the thumbnails: a strong peak at a shift that leaves most of the view shared) is a
**repeat** and is not counted again: a field revisited, or a view that settled twice without
really moving, counts once.

Captured fields go through the same field pipeline as ``edgekit field`` and ``screen --fields``
(find, crop, classify, record), so a camera session and a folder of photos of the same fields
give the same cells.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edgekit.device.preprocess import opencv
from edgekit.device.side_output import SideOutput
from edgekit.safefile import check_output_target

if TYPE_CHECKING:
    from edgekit.device.field.focus import FocusRule

THUMB_WIDTH = 256
# frames a burned-in mark found on one frame is still left out of the focus score: the camera draws
# it at the same place while the smear moves, but a mark blurred with the view (a reticle, a test
# video) is found at some blurs and not at others, and the score jumped mid-focus when it was not
MARK_MEMORY = 60
# with a rule that judges focus at a reference cell radius, the cells' radius is measured on every
# RADIUS_EVERY-th frame (the cells keep their size while the stage moves; a measure costs about what
# the focus score does) and the median of the last RADIUS_KEPT measures is used
RADIUS_EVERY = 8
RADIUS_KEPT = 5


@dataclass(frozen=True)
class CaptureSettings:
    """When a frame is a field. Stillness is measured by registration (phase correlation of
    consecutive thumbnails), in pixels of the frame: a hand's +-1 px shake is still, a moving stage
    is not."""

    motion: float = 3.0  # kept for callers; stillness is now ``still_px`` (registration)
    settle: int = 4  # still, sharp frames in a row, sharpness no longer rising, before the field is taken
    min_sharpness: float | None = None  # None: the focus floor (edgekit.device.field.focus)
    blur_ratio: float = 0.5  # kept for callers (the session's focus rule is SESSION_RATIO)
    repeat_response: float = 0.3  # phase-correlation peak above which two consecutive views are registered
    repeat_overlap: float = 0.5  # shared fraction of the view above which it is the same field
    manual: bool = False  # capture only on request (a key press), never on settling
    still_px: float = 2.5  # frame-to-frame shift (frame pixels) up to which the view is still
    shake_px: float = 16.0  # shifts between still_px and this, registered, are a shaking hand
    rising: float = 0.03  # sharpness rising more than this over the settle window: focus in progress


@dataclass
class CaptureStats:
    frames: int = 0
    moving: int = 0
    blurred: int = 0
    fields: int = 0
    repeats: int = 0
    shaking: int = 0
    focusing: int = 0

    def line(self) -> str:
        return (f"{self.frames} frames: {self.fields} fields captured, {self.repeats} repeats not counted, "
                f"{self.blurred} blurred and {self.moving} moving frames skipped"
                f"{f', {self.shaking} shaking' if self.shaking else ''}"
                f"{f', {self.focusing} while focusing' if self.focusing else ''}")


def _thumb(rgb: np.ndarray) -> np.ndarray:
    cv2 = opencv()
    h, w = rgb.shape[:2]
    scale = THUMB_WIDTH / w
    small = cv2.resize(rgb, (THUMB_WIDTH, max(8, round(h * scale))), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)


def sharpness(rgb: np.ndarray, rule: FocusRule | None = None, marks: list | None = None,
              radius: float | None = None) -> float:
    """The focus score of a frame: the same measure, on the whole frame, as every other path
    (``rule``: the bundle's :class:`~edgekit.device.field.focus.FocusRule`, default the shared one;
    a central crop misjudged fields whose middle is empty). ``marks``: the burned-in marks' boxes
    the camera remembers (:class:`MarkMemory`), with a rule that leaves them out; ``radius``: the
    cells' radius the camera remembers (:class:`RadiusMemory`), with a rule that judges at a
    reference radius."""
    from edgekit.device.field.focus import DEFAULT_RULE

    return (rule or DEFAULT_RULE).score(rgb, marks, radius)


@dataclass
class RadiusMemory:
    """The cells' radius (:func:`edgekit.device.field.segment.cell_radius`) measured on every
    ``every``-th frame: the median of the last ``kept`` measures (0.0 while none found cells: the rule
    then takes the site's radius, and a frame without cells is not searched again until its turn)."""

    every: int = RADIUS_EVERY
    kept: int = RADIUS_KEPT
    _seen: list = field(default_factory=list)
    _n: int = 0

    def update(self, rgb: np.ndarray) -> float:
        """Measure this frame when it is due; the radius remembered."""
        from edgekit.device.field.segment import cell_radius
        from edgekit.device.order import median

        if self._n % self.every == 0:
            radius = cell_radius(rgb)
            if radius > 0:
                self._seen = (self._seen + [radius])[-self.kept:]
        self._n += 1
        return float(median(self._seen)) if self._seen else 0.0


@dataclass
class MarkMemory:
    """The burned-in marks (:func:`edgekit.device.field.marks.burned_marks`) found on any of the
    last ``frames`` frames: all of them are left out of each frame's focus score."""

    frames: int = MARK_MEMORY
    _seen: list = field(default_factory=list)  # (frame number, box)
    _n: int = 0

    def update(self, rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Add this frame's marks; every box still remembered."""
        from edgekit.device.field.marks import burned_marks

        self._n += 1
        found = burned_marks(rgb)
        self._seen = [(k, b) for k, b in self._seen if self._n - k < self.frames and b not in found]
        self._seen += [(self._n, b) for b in found]
        return [b for _, b in self._seen]


def shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(shift in thumbnail pixels, phase-correlation peak) of thumbnail ``b`` against ``a``."""
    cv2 = opencv()
    if a.shape != b.shape:
        return float("inf"), 0.0
    window = cv2.createHanningWindow((a.shape[1], a.shape[0]), cv2.CV_32F)
    (dx, dy), response = cv2.phaseCorrelate(a - a.mean(), b - b.mean(), window)
    return float(np.hypot(dx, dy)), float(response)


def registered(a: np.ndarray, b: np.ndarray, settings: CaptureSettings) -> tuple[bool, float, float]:
    """Whether thumbnails ``a`` and ``b`` show the same stretch of smear: (same, peak, overlap)."""
    cv2 = opencv()
    if a.shape != b.shape:
        return False, 0.0, 0.0
    window = cv2.createHanningWindow((a.shape[1], a.shape[0]), cv2.CV_32F)
    (dx, dy), response = cv2.phaseCorrelate(a - a.mean(), b - b.mean(), window)
    h, w = a.shape
    overlap = max(0.0, 1 - abs(dx) / w) * max(0.0, 1 - abs(dy) / h)
    same = response >= settings.repeat_response and overlap >= settings.repeat_overlap
    return same, float(response), float(overlap)


@dataclass
class FieldCapture:
    """Decides, frame by frame, when a new field has settled (see the module docstring). ``rule``:
    the bundle's :class:`~edgekit.device.field.focus.FocusRule` (its measure and floor; default
    the shared one)."""

    settings: CaptureSettings = field(default_factory=CaptureSettings)
    stats: CaptureStats = field(default_factory=CaptureStats)
    rule: FocusRule | None = None

    def __post_init__(self) -> None:
        from edgekit.device.field.focus import DEFAULT_RULE

        self.rule = self.rule or DEFAULT_RULE
        self._marks = MarkMemory() if self.rule.marks else None
        self._radius = RadiusMemory() if self.rule.reference else None
        given = self.settings.min_sharpness
        self._min_sharp = self.rule.floor if given is None else given
        self._previous: np.ndarray | None = None
        self._armed = True  # a field may be taken: the view moved since the last capture
        self._requested = False
        self._captured: list = []  # identity signatures of the fields taken
        self._window: list[tuple[float, np.ndarray]] = []  # (sharpness, frame) of the current still run
        self._shaky = 0  # frames in a row that registered but moved more than still_px
        self.hold_still = False  # shake is keeping the field from being taken: tell the worker
        self.last_sharpness = 0.0  # the focus of the last field taken

    def request(self) -> None:
        """Take the next sharp frame even if the view has not moved (a key press)."""
        self._requested = True

    def offer(self, rgb: np.ndarray) -> np.ndarray | None:
        """The frame when it is a new field to count, else None (and why is in :attr:`stats`).
        The field taken is the sharpest frame of the settled still run."""
        self.stats.frames += 1
        thumb = _thumb(rgb)
        moved_px, response = (0.0, 1.0) if self._previous is None else shift(self._previous, thumb)
        moved_px *= rgb.shape[1] / THUMB_WIDTH  # in frame pixels
        self._previous = thumb
        sharp = sharpness(rgb, self.rule, None if self._marks is None else self._marks.update(rgb),
                          None if self._radius is None else self._radius.update(rgb))
        if self._skipped(sharp, moved_px, response):
            return None
        settled = self._settled(sharp, rgb)  # always: it adds the frame to the still run
        if not (self._requested or settled):
            return None
        return self._take()

    def _skipped(self, sharp: float, moved_px: float, response: float) -> bool:
        """Whether the frame is blurred or not still (counted in :attr:`stats` by why); such a frame
        ends the still run, and one that left the view re-arms the capture."""
        st = self.settings
        registered_ = response >= st.repeat_response
        still = registered_ and moved_px <= st.still_px
        shaking = registered_ and st.still_px < moved_px <= st.shake_px
        blurred = sharp < self._min_sharp
        if not (blurred or not still):
            return False
        if blurred:
            self.stats.blurred += 1
        elif shaking:
            self.stats.shaking += 1
        else:
            self.stats.moving += 1
        self._shaky = self._shaky + 1 if shaking else 0
        self.hold_still = self._armed and self._shaky >= st.settle
        self._window = []
        self._armed = self._armed or not registered_ or moved_px > st.shake_px
        return True

    def _settled(self, sharp: float, rgb: np.ndarray) -> bool:
        """Add a sharp, still frame to the still run; whether the field has settled (an armed, not
        manual capture whose focus over the run neither rises nor falls off its peak)."""
        st = self.settings
        self._shaky = 0
        self.hold_still = False
        self._window = (self._window + [(sharp, rgb)])[-st.settle:]
        values = [v for v, _ in self._window]
        steady = len(values) >= st.settle and values[-1] <= (1 + st.rising) * values[0]
        peak = sharp >= (1 - st.rising) * max(values)
        settled = self._armed and not st.manual and steady and peak
        if self._armed and not st.manual and len(values) >= st.settle and not settled:
            self.stats.focusing += 1
        return bool(settled)

    def _take(self) -> np.ndarray | None:
        """The still run's sharpest frame, unless it is a field taken before; disarms the capture."""
        from edgekit.device.field.identity import same_field, signature

        self._requested = False
        self._armed = False
        best, frame = max(self._window, key=lambda t: t[0])
        sig = signature(frame)
        if any(same_field(old, sig) for old in self._captured):
            self.stats.repeats += 1
            return None
        self._captured.append(sig)
        self.stats.fields += 1
        self.last_sharpness = best
        return frame


def hold_still_began(capture: FieldCapture, was: bool) -> tuple[bool, bool]:
    """(whether shake started keeping a field from being taken at this frame, the state now): the
    worker is told once per shaky spell, not at every frame of it."""
    now = bool(getattr(capture, "hold_still", False))
    return now and not was, now


def camera_fields(frames: Iterable[np.ndarray], capture: FieldCapture,
                  on_hold_still: Callable[[int], None] | None = None) -> Iterator[tuple]:
    """Every new field among ``frames``, segmented, as :func:`edgekit.device.screening.record_fields`
    takes them: ``("field 3", None, rgb, cells, reason, focus)``. ``on_hold_still(frame number)`` is
    called when shake starts keeping the next field from being taken."""
    from edgekit.device.field import count_cells
    from edgekit.device.field.quality import field_focus

    shaking = False
    for n, rgb in enumerate(frames, 1):
        taken = capture.offer(rgb)
        began, shaking = hold_still_began(capture, shaking)
        if began and on_hold_still is not None:
            on_hold_still(n)
        if taken is None:
            continue
        focus = field_focus(taken, capture.rule)  # the sharpest frame of the still run, not the last
        cells, _, reason = count_cells(taken, focus=focus, rule=capture.rule)
        yield f"field {capture.stats.fields}", None, taken, cells, reason, focus


class LiveView:
    """What the worker sees: the last counted field with its cells coloured as counted and a
    status line (frames per second, fields, cells and parasitemia so far), in an OpenCV window
    when one can be opened (``show``) and/or written to ``overlay_path`` (replaced atomically, so
    a phone or image viewer refreshing it never reads half a file)."""

    def __init__(self, decision, overlay_path=None, show: bool = False, domain=None) -> None:
        self.decision = decision
        self.domain = domain  # the bundle's domain statistics: the field's verdict is drawn with it
        # refused now, not after the first field: a folder, a device, a missing or read-only folder
        self.overlay_path = None if overlay_path is None else check_output_target(overlay_path, force=True)
        self.show = show
        self.overlay_out = SideOutput("overlay")
        self._pending: tuple[int, np.ndarray, list, dict[int, float]] | None = None
        self._scores: dict[int, float | None] = {}
        self.session_scores: list[float | None] = []  # every recorded cell's domain score

    def field(self, k: int, rgb: np.ndarray, cells: list) -> None:
        """A new field was captured; its cells' probabilities arrive through :meth:`outcome`."""
        self._pending = (k, rgb, cells, {})
        self._scores = {}

    def probabilities(self, by_cell_id: dict[int, float], scores: dict[int, float | None]) -> None:
        """The pending field's probabilities and domain scores, when it was classified in one go
        (``edgekit camera``)."""
        if self._pending is not None:
            self._pending[3].update(by_cell_id)
            self._scores.update(scores)
            self.session_scores.extend(scores.values())

    def outcome(self, out) -> None:
        if out.status == "classified":
            self.session_scores.append(out.domain_score)
        if self._pending is None or out.prediction is None or out.prediction.p_positive is None:
            return
        k, _, _, probs = self._pending
        prefix = f"field {k}#"
        if out.source_id.startswith(prefix):
            cell = int(out.source_id[len(prefix):])
            probs[cell] = out.prediction.p_positive
            self._scores[cell] = out.domain_score

    def verdict(self) -> dict:
        """The guard's verdict on everything seen so far (``ok: false`` when nothing can vouch)."""
        from edgekit.device.domain import session_verdict

        return session_verdict(self.session_scores, self.domain, "camera session")

    def render(self, status: str) -> np.ndarray | None:
        """Draw the pending field with ``status`` and show/write it; returns the picture."""
        from edgekit.device.domain import field_verdict
        from edgekit.device.field import FieldReport, draw_overlay

        if self._pending is None:
            return None
        k, rgb, cells, probs = self._pending
        kept = [c for c in cells if c.id in probs]
        scores = [self._scores.get(c.id) for c in kept]
        report = FieldReport(source=f"field {k}", shape=rgb.shape[:2], cells=kept,
                             probabilities=[probs[c.id] for c in kept],
                             decisions=[self.decision.cell_call(probs[c.id]) for c in kept],
                             decision=self.decision, domain_scores=scores,
                             domain=field_verdict(scores, self.domain))
        picture = draw_overlay(rgb, report)
        draw_status(picture, status)
        if self.overlay_path is not None:
            self._write_overlay(picture)
        if self.show:
            self.show = show_frame(picture)
        return picture

    def _write_overlay(self, picture: np.ndarray) -> None:
        """Replace the overlay file; one that cannot be written (a full disk) is said once, and the
        counting goes on (it stopped the camera, and a `screen --camera` session, half way)."""
        ok, png = opencv().imencode(".png", picture[:, :, ::-1])
        if ok:
            self.overlay_out.replace(self.overlay_path, png.tobytes())  # pyright: ignore[reportArgumentType]


def draw_status(picture: np.ndarray, status: str) -> None:
    """The status line on its own black band just under the overlay's header line (the NOT
    VALIDATED banner is along the bottom: the two never overlap)."""
    cv2 = opencv()
    scale = max(1, round(max(picture.shape[:2]) / 640))
    font, size = cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale
    (_, th), base = cv2.getTextSize("Ag", font, size, scale)
    top = th + base + 8 + 2 * scale  # the header band's height (draw_overlay), and a gap
    (tw, _), _ = cv2.getTextSize(status, font, size, scale)
    cv2.rectangle(picture, (0, top), (min(picture.shape[1] - 1, tw + 8), top + th + base + 8), (0, 0, 0), -1)
    cv2.putText(picture, status, (4, top + th + 4), font, size, (255, 255, 0), scale, cv2.LINE_AA)


def show_frame(rgb: np.ndarray) -> bool:
    """Show a frame in an OpenCV window; False when this OpenCV build has no GUI (headless)."""
    cv2 = opencv()
    try:
        cv2.imshow("edgekit", rgb[:, :, ::-1])
        cv2.waitKey(1)
    except cv2.error:
        return False
    return True


def requests_from_stdin(capture: FieldCapture, echo: Callable[[str], None]) -> None:
    """Each line typed on stdin (Enter) asks for a capture: the key press of a headless station."""
    import sys
    import threading

    def read() -> None:
        for _ in sys.stdin:
            capture.request()

    threading.Thread(target=read, daemon=True).start()
    echo("press Enter to capture the current field")


def pressed_key() -> int | None:
    """The key pressed in the preview window since the last call, if any (needs a GUI build)."""
    cv2 = opencv()
    try:
        key = cv2.waitKey(1)
    except cv2.error:
        return None
    return None if key < 0 else key & 0xFF
