# pyright: basic
"""A site's own focus floor (issue 22), for ``edgekit site adapt``.

One absolute floor cannot fit every microscope: with burned-in marks left out, IML's soft optics put
usable fields at 0.023-0.09 while crisp fields blurred with sigma 2 still score up to 0.035. A site's
own fields say what in focus looks like there; the floor is a share of their median score
(:func:`edgekit.device.field.focus.site_rule`, the share set on calibration fields by
``benchmarks/focus_floor.py --site``), recorded in the site bundle's manifest (``focus``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

MIN_FIELDS = 5  # fewer fields than this say too little about the site's optics: the shared floor stays


def site_focus(fields_dir: Path | None, stems: list[str],
               log: Callable[[str], None]) -> dict[str, Any] | None:
    """The site's focus rule (a manifest's ``focus``) from its training fields ``stems`` in
    ``fields_dir``; None (the shared floor) when fewer than MIN_FIELDS of them can be read."""
    from edgekit.device.field.focus import SITE_MARKS, FocusRule, site_rule
    from edgekit.device.field.quality import field_focus
    from edgekit.device.preprocess import is_image_file, read_image
    from edgekit.errors import ImageError

    if fields_dir is None or not Path(fields_dir).is_dir():
        log("focus: no field images: the site bundle keeps the shared focus floor")
        return None
    wanted = set(stems)
    paths = sorted(p for p in Path(fields_dir).iterdir() if is_image_file(p) and p.stem in wanted)
    rule = FocusRule(marks=SITE_MARKS)  # the site rule's measure
    scores = []
    for path in paths:
        try:
            score = field_focus(read_image(path), rule)
        except ImageError:
            continue
        if score is not None:
            scores.append(score)
    if len(scores) < MIN_FIELDS:
        log(f"focus: {len(scores)} readable training fields (< {MIN_FIELDS}): the site bundle keeps the "
            "shared focus floor")
        return None
    try:
        chosen = site_rule(scores)
    except ValueError as exc:  # fields without edges (blank, black) give no floor
        log(f"focus: {exc}: the site bundle keeps the shared focus floor")
        return None
    log(f"focus: site floor {chosen.floor:g} ({chosen.source})")
    return asdict(chosen)
