# pyright: basic
"""A site's own focus floor (issue 22), for ``edgekit site adapt``.

One absolute floor cannot fit every microscope: with burned-in marks left out, IML's soft optics put
usable fields at 0.023-0.09 while crisp fields blurred with sigma 2 still score up to 0.035. A site's
own fields say what in focus looks like there; the floor is a share of their median score
(:func:`edgekit.device.field.focus.site_rule`, the share set on calibration fields by
``benchmarks/focus_floor.py --site``), recorded in the site bundle's manifest (``focus``).

A site whose training fields are mostly blurred would set its floor on blur. Each field is also
scored blurred once more (:func:`field_scores`); fields that barely respond were blurred already and
are left out of the median; when too few respond as sharp fields do, the bundle gets the shared floor
(marks left out, as every site rule) with a warning (``benchmarks/focus_site_guard.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    from edgekit.device.field.focus import FocusRule

T = TypeVar("T")

MIN_FIELDS = 5  # fewer fields than this say too little about the site's optics: the shared floor stays


def field_scores(rgb: np.ndarray, rule: FocusRule,
                 radius: float | None = None) -> tuple[float, float, float] | None:
    """The field's focus score under ``rule`` (as :func:`~edgekit.device.field.quality.field_focus`
    scores it), the same after a Gaussian blur of SITE_BLUR_SIGMA (how it responds to blur) and its
    cells' radius (px; ``radius``: when measured already); None for a field the gate refuses by its
    shape alone. The blurred copy leaves out the marks found on the field itself (a camera draws them
    after the optics, and a blurred bar missed by the mark finder would read as edges) and is judged
    at the field's own cells' radius, its blur at that rule's scale (SITE_BLUR_SIGMA px there: the
    response was calibrated on fields whose cells measure about the reference radius)."""
    from edgekit.device.field.focus import SITE_BLUR_SIGMA
    from edgekit.device.field.marks import burned_marks
    from edgekit.device.field.quality import shape_reason
    from edgekit.device.field.segment import cell_radius
    from edgekit.device.field.view import inside_crop
    from edgekit.device.preprocess import opencv

    if shape_reason(rgb):
        return None
    crop = np.ascontiguousarray(inside_crop(rgb))
    marks = burned_marks(crop) if rule.marks else None
    radius = cell_radius(crop) if radius is None else radius
    shrink = max(1.0, rule.judged_radius(crop, radius) / rule.reference) if rule.reference else 1.0
    blurred = opencv().GaussianBlur(crop, (0, 0), SITE_BLUR_SIGMA * shrink)
    return rule.score(crop, marks, radius), rule.score(blurred, marks, radius), radius


def site_focus(fields_dir: Path | None, stems: list[str],
               log: Callable[[str], None]) -> dict[str, Any] | None:
    """The site's focus rule (a manifest's ``focus``) from its training fields ``stems`` in
    ``fields_dir``: :func:`fields_focus` of their images; None without the folder."""
    from edgekit.device.preprocess import is_image_file

    if fields_dir is None or not Path(fields_dir).is_dir():
        log("focus: no field images: the shared focus floor stays")
        return None
    wanted = set(stems)
    paths = sorted(p for p in Path(fields_dir).iterdir() if is_image_file(p) and p.stem in wanted)
    return fields_focus(paths, log)


def fields_focus(paths: Iterable[Path], log: Callable[[str], None]) -> dict[str, Any] | None:
    """The site's focus rule from its field images ``paths`` (:func:`images_focus`; an unreadable
    image is left out)."""
    from edgekit.device.preprocess import read_image
    from edgekit.errors import ImageError

    def load(path: Path) -> np.ndarray | None:
        try:
            return read_image(path)
        except ImageError:
            return None

    return images_focus(list(paths), load, log)


def images_focus(items: Sequence[T], load: Callable[[T], np.ndarray | None],
                 log: Callable[[str], None], reference: float | None = None) -> dict[str, Any] | None:
    """The site's focus rule from its fields ``items`` (``load``: one field's pixels, None where
    unreadable: left out): each field's :func:`field_scores` at its own pixels; where the fields'
    median cell radius calls for a reference scale (:func:`~edgekit.device.field.focus.site_reference`:
    an enlarging microscope), every field is scored again at it, as the rule will judge fields, and
    the rule records it (:func:`measured_focus`). ``reference``: the reference radius (default
    REFERENCE_RADIUS; 0: never, the fields' own pixels)."""
    from edgekit.device.field.focus import REFERENCE_RADIUS, SITE_MARKS, FocusRule, site_reference

    measured = [_scores(load(item), FocusRule(marks=SITE_MARKS)) for item in items]  # the site measure
    radius = median_radius(measured)
    reference = site_reference(radius, REFERENCE_RADIUS if reference is None else reference)
    if reference:
        at = FocusRule(marks=SITE_MARKS, radius=round(radius, 1), reference=reference)
        measured = [m if m is None else _scores(load(item), at, m[2])
                    for item, m in zip(items, measured, strict=True)]
    return measured_focus(measured, log, reference)


def _scores(rgb: np.ndarray | None, rule: FocusRule,
            radius: float | None = None) -> tuple[float, float, float] | None:
    return None if rgb is None else field_scores(rgb, rule, radius)


def median_radius(measured: list[tuple[float, float, float] | None]) -> float:
    """The median cell radius of the fields' :func:`field_scores` (0.0: none read)."""
    radii = [m[2] for m in measured if m is not None and m[2] > 0]
    return float(np.median(radii)) if radii else 0.0


def measured_focus(measured: list[tuple[float, float, float] | None],
                   log: Callable[[str], None], reference: float = 0.0) -> dict[str, Any] | None:
    """The site's focus rule (a manifest's ``focus``) from its fields' :func:`field_scores` (None: a
    field refused by its shape), measured at ``reference`` px of cell radius (0: their own pixels);
    None (the shared floor) when fewer than MIN_FIELDS were measured or none has edges. Fields that
    look blurred (:func:`looks_blurred`) give the shared floor with marks left out, and a warning."""
    from edgekit.device.field.focus import looks_blurred, site_rule

    kept = [m for m in measured if m is not None]
    scores, blurred = [m[0] for m in kept], [m[1] for m in kept]
    if len(scores) < MIN_FIELDS:
        log(f"focus: {len(scores)} readable fields (< {MIN_FIELDS}): the shared focus floor stays")
        return None
    try:
        chosen = site_rule(scores, blurred, radius=median_radius(measured), reference=reference)
    except ValueError as exc:  # fields without edges (blank, black) give no floor
        log(f"focus: {exc}: the shared focus floor stays")
        return None
    if looks_blurred(scores, blurred):
        log(f"focus: WARNING: the fields look out of focus ({chosen.source}): the shared floor is kept; "
            "add in-focus fields to set the site's own")
        return asdict(chosen)
    log(f"focus: site floor {chosen.floor:g} ({chosen.source}); cells' radius {chosen.radius:g} px")
    return asdict(chosen)
