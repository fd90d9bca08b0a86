"""Where the shared datasets live: ``$EDGEKIT_DATA``, else ``../shared/data`` next to the checkout."""

from __future__ import annotations

import os
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]


def shared_data(name: str = "") -> Path:
    """The shared data folder (or the dataset ``name`` inside it); nothing is downloaded."""
    root = os.environ.get("EDGEKIT_DATA")
    base = Path(root).expanduser() if root else _CHECKOUT.parent / "shared" / "data"
    return base / name if name else base
