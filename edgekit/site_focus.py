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

from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edgekit.device.field.focus import FocusRule

MIN_FIELDS = 5  # fewer fields than this say too little about the site's optics: the shared floor stays


def field_scores(rgb: np.ndarray, rule: FocusRule) -> tuple[float, float, float] | None:
    """The field's focus score under ``rule`` (as :func:`~edgekit.device.field.quality.field_focus`
    scores it), the same after a Gaussian blur of SITE_BLUR_SIGMA (how it responds to blur) and its
    cells' radius (px); None for a field the gate refuses by its shape alone. The blurred copy leaves
    out the marks found on the field itself: a camera draws them after the optics, and a blurred bar
    missed by the mark finder would read as edges."""
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
    blurred = opencv().GaussianBlur(crop, (0, 0), SITE_BLUR_SIGMA)
    return rule.score(crop, marks), rule.score(blurred, marks), cell_radius(crop)


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
    """The site's focus rule from its field images ``paths`` (:func:`measured_focus` of their
    :func:`field_scores`; an unreadable image is left out)."""
    from edgekit.device.field.focus import SITE_MARKS, FocusRule
    from edgekit.device.preprocess import read_image
    from edgekit.errors import ImageError

    rule = FocusRule(marks=SITE_MARKS)  # the site rule's measure
    measured = []
    for path in paths:
        try:
            measured.append(field_scores(read_image(path), rule))
        except ImageError:
            continue
    return measured_focus(measured, log)


def measured_focus(measured: list[tuple[float, float, float] | None],
                   log: Callable[[str], None]) -> dict[str, Any] | None:
    """The site's focus rule (a manifest's ``focus``) from its fields' :func:`field_scores` (None: a
    field refused by its shape); None (the shared floor) when fewer than MIN_FIELDS were measured or
    none has edges. Fields that look blurred (:func:`looks_blurred`) give the shared floor with marks
    left out, and a warning."""
    from edgekit.device.field.focus import looks_blurred, site_rule

    kept = [m for m in measured if m is not None]
    scores, blurred = [m[0] for m in kept], [m[1] for m in kept]
    radii = [m[2] for m in kept if m[2] > 0]
    if len(scores) < MIN_FIELDS:
        log(f"focus: {len(scores)} readable fields (< {MIN_FIELDS}): the shared focus floor stays")
        return None
    try:
        chosen = site_rule(scores, blurred, radius=float(np.median(radii)) if radii else 0.0)
    except ValueError as exc:  # fields without edges (blank, black) give no floor
        log(f"focus: {exc}: the shared focus floor stays")
        return None
    if looks_blurred(scores, blurred):
        log(f"focus: WARNING: the fields look out of focus ({chosen.source}): the shared floor is kept; "
            "add in-focus fields to set the site's own")
        return asdict(chosen)
    log(f"focus: site floor {chosen.floor:g} ({chosen.source}); cells' radius {chosen.radius:g} px")
    return asdict(chosen)
