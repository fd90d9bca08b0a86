# pyright: basic
"""The field quality gate: fields that cannot be counted, and why."""

from __future__ import annotations

import numpy as np

from edgekit.device.field.focus import DEFAULT_RULE, FOCUS_FLOOR, FocusRule
from edgekit.device.field.segment import working_copy
from edgekit.device.field.view import Outside, inside_crop, surround
from edgekit.device.preprocess import opencv

MIN_SIDE = 64
MAX_ASPECT = 10  # camera fields are 4:3 to 16:9; a strip this thin is not a field (and cannot be shrunk)
MIN_SHARPNESS = FOCUS_FLOOR  # the one focus floor (edgekit.device.field.focus)
MAX_SATURATED = 0.97  # overexposed: nearly all saturated white (a white background alone is not)


def shape_reason(rgb: np.ndarray) -> str | None:
    """Why ``rgb`` cannot be a microscope field by its shape alone (too small, a strip), or None."""
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        return f"image too small for a microscope field ({w}x{h})"
    if max(h, w) > MAX_ASPECT * min(h, w):
        return f"not a microscope field: a {w}x{h} strip (sides more than {MAX_ASPECT}:1)"
    return None


def field_quality(rgb: np.ndarray, small: np.ndarray | None = None, focus: float | None = None,
                  rule: FocusRule | None = None) -> str | None:
    """The reason this field cannot be counted (blank, overexposed, dark, out of focus), or None.
    ``small``: a shrunk copy to measure on (the segmentation's working copy); default: at most
    1024 px. ``focus``: the field's focus score when the caller has it already. ``rule``: the
    bundle's focus rule (default: the one floor every microscope shares)."""
    cv2 = opencv()
    reason = shape_reason(rgb)
    if reason:
        return reason
    if small is None:
        small = working_copy(rgb, 1024)[0]
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    if saturated_fraction(small) > MAX_SATURATED:
        return f"overexposed (more than {MAX_SATURATED:.0%} of the field is saturated white)"
    mean, std = (float(v[0, 0]) for v in cv2.meanStdDev(gray))
    if mean < 40:
        return "too dark (underexposed or no light)"
    if std < 3:
        return "blank field (no contrast)"
    rule = rule or DEFAULT_RULE
    return rule.reason(rule.score(rgb) if focus is None else focus)


def field_focus(rgb: np.ndarray, rule: FocusRule | None = None, outside: Outside = ...) -> float | None:
    """The field's focus score under ``rule`` (default: the shared one), measured once for both the
    field gate (:func:`count_cells`) and the session's check; None for an image :func:`count_cells`
    refuses by its shape alone. ``outside``: its surround when the caller found it
    (:func:`~edgekit.device.field.view.surround`)."""
    if shape_reason(rgb):
        return None
    outside = surround(rgb, outside)
    return (rule or DEFAULT_RULE).score(rgb if outside is None else inside_crop(rgb, outside))


def saturated_fraction(rgb: np.ndarray) -> float:
    """Fraction of the pixels saturated white in every channel."""
    cv2 = opencv()
    white = cv2.countNonZero(cv2.inRange(rgb, (250, 250, 250), (255, 255, 255)))
    return white / (rgb.shape[0] * rgb.shape[1])
