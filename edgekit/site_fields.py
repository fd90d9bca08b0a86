# pyright: basic
"""Which of a site's fields a site bundle was fitted on (``site_fields.json``, written by ``edgekit site
adapt``): its training fields and the validation fields its epoch and cutoff were chosen on. Light:
``edgekit site check`` reads it on a device install."""

from __future__ import annotations

import json
from pathlib import Path

from edgekit.errors import DataError

FIELDS_SPLIT = "site_fields.json"  # {train: [...], val: [...], test: [...]} field stems
FITTED_PARTS = ("train", "val")  # the parts the bundle learnt from or was chosen on; test only measured it
MAX_SPLIT_BYTES = 16 << 20


def fitted_fields(bundle_dir: Path) -> set[str]:
    """Stems of the fields ``bundle_dir`` was fitted on; none when it records no split (a bundle not
    made by ``site adapt``). A split file that is there but cannot be read (not a regular file, not
    JSON lists) is refused with :class:`DataError`: which fields it learnt from would be unknown."""
    from edgekit.safefile import read_regular_bytes

    path = Path(bundle_dir) / FIELDS_SPLIT
    if not path.exists() and not path.is_symlink():
        return set()
    try:
        split = json.loads(read_regular_bytes(path, MAX_SPLIT_BYTES, "field split", error=DataError))
    except (ValueError, RecursionError) as exc:
        raise DataError(f"unreadable {path}: {exc}") from None
    parts = [split.get(part) for part in FITTED_PARTS] if isinstance(split, dict) else [None]
    lists = [names for names in parts if isinstance(names, list)]
    if len(lists) != len(FITTED_PARTS):
        raise DataError(f"{path}: want lists of field names under {' and '.join(FITTED_PARTS)}")
    return {Path(str(s)).stem for names in lists for s in names}
