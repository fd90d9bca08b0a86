# pyright: basic
"""Counting a field's cells: what lies outside the field of view painted out (:mod:`.view`), the
quality gate (:mod:`.quality`), then the finder (:mod:`.segment`), then the checks only a found cell
size allows."""

from __future__ import annotations

import numpy as np

from edgekit.device.field.focus import DEFAULT_RULE, FocusRule
from edgekit.device.field.quality import field_quality, saturated_fraction, shape_reason
from edgekit.device.field.segment import MAX_RADIUS_FRACTION, segment_cells, working_copy
from edgekit.device.field.types import CellBox, FieldParams
from edgekit.device.field.view import Outside, inside_crop, paint_outside, surround
from edgekit.device.quality import DEFAULT_GATES


def count_cells(
    rgb: np.ndarray, params: FieldParams | None = None, focus: float | None = None,
    rule: FocusRule | None = None, outside: Outside = ...,
) -> tuple[list[CellBox], float, str | None]:
    """Quality check, then :func:`~edgekit.device.field.segment.segment_cells`: (cells, typical
    radius in pixels, reason or None). A reason means the field is not to be counted, and the cell
    list is then empty. ``focus``: the field's :func:`~edgekit.device.field.quality.field_focus`
    when the caller has it already; ``rule``: the bundle's focus rule (default: the shared one);
    ``outside``: its surround when the caller found it (:func:`~edgekit.device.field.view.surround`)."""
    p = params or FieldParams()
    reason = shape_reason(rgb)  # before shrinking: a 1-px strip cannot be shrunk
    if reason:
        return [], 0.0, reason
    outside = surround(rgb, outside)  # an eyepiece's black surround is no smear
    if outside is not None:
        focus = (rule or DEFAULT_RULE).score(inside_crop(rgb, outside)) if focus is None else focus
        rgb = paint_outside(rgb, outside, p)
    work = working_copy(rgb, p.max_side, p.enlarge)
    # measured on the field's own pixels, never an enlarged copy (interpolation smooths the noise)
    small = work[0] if work[1] <= 1 else rgb
    reason = field_quality(rgb, small, focus, rule)
    if reason:
        return [], 0.0, reason
    cells, radius = segment_cells(rgb, p, work, outside)
    if radius > min(rgb.shape[:2]) / MAX_RADIUS_FRACTION:
        # the "cells" are one mass wider than a quarter of the field: cells are piled up
        return [], radius, "cells overlap into one mass (a thick part of the smear); move to a thinner area"
    if cells and 2 * radius < DEFAULT_GATES.min_side:
        # specks of noise or a magnification far too low: no crop this small can be classified
        return [], radius, (f"no red cells found (what was found is {2 * radius:.0f} px across, under the "
                            f"{DEFAULT_GATES.min_side} px a cell needs: noise, or too low a magnification)")
    if not cells:
        if saturated_fraction(small) > 0.5:  # a white background with no cell left visible on it
            return [], radius, "overexposed (no cells visible; more than half the field is saturated white)"
        return [], radius, "no red cells found"
    return cells, radius, None

