# pyright: basic
"""Which of a site's fields a site bundle was fitted on (``site_fields.json``, written by ``edgekit site
adapt``): its training fields and the validation fields its epoch and cutoff were chosen on. Light:
``edgekit site check`` reads it on a device install."""

from __future__ import annotations

import json
from pathlib import Path

FIELDS_SPLIT = "site_fields.json"  # {train: [...], val: [...], test: [...]} field stems
FITTED_PARTS = ("train", "val")  # the parts the bundle learnt from or was chosen on; test only measured it


def fitted_fields(bundle_dir: Path) -> set[str]:
    """Stems of the fields ``bundle_dir`` was fitted on (none when it records no split: a bundle not
    made by ``site adapt``, or one whose split file is missing or unreadable)."""
    try:
        split = json.loads((Path(bundle_dir) / FIELDS_SPLIT).read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(split, dict):
        return set()
    parts = [split.get(part) for part in FITTED_PARTS]
    return {Path(str(s)).stem for names in parts if isinstance(names, list) for s in names}
