# pyright: basic
"""Where the shared datasets live: ``$EDGEKIT_DATA``, else ``../shared/data`` next to the checkout."""

from __future__ import annotations

import os
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]


def default_bundle_dir() -> Path:
    """The model shipped inside the package (``edgekit/models/default``); may not exist."""
    return Path(__file__).resolve().parent / "models" / "default"


def bundle_folder(bundle: str | os.PathLike | None) -> Path:
    """The folder of a bundle given as its folder or its ``manifest.json`` (None: the default)."""
    if bundle is None:
        return default_bundle_dir()
    folder = Path(bundle)
    return folder.parent if folder.is_file() and folder.name == "manifest.json" else folder


def shared_data(name: str = "") -> Path:
    """The shared data folder (or the dataset ``name`` inside it); nothing is downloaded."""
    root = os.environ.get("EDGEKIT_DATA")
    base = Path(root).expanduser() if root else _CHECKOUT.parent / "shared" / "data"
    return base / name if name else base


DATA_ROOT_NAME = "$EDGEKIT_DATA"  # how a manifest names the shared data root


def portable_path(path: str | os.PathLike, base: str | os.PathLike | None = None,
                  travels: bool = True) -> str:
    """``path`` as a manifest records it, never an absolute machine path: ``$EDGEKIT_DATA/<rel>`` under
    the shared data root, else relative to ``base`` (a run or bundle folder). A folder that
    ``travels`` (a packed bundle) keeps a relative path only to its neighbours, else just the name;
    a run folder stays on its machine and keeps any relative path."""
    p, root = Path(path).resolve(), shared_data().resolve()
    if p == root or root in p.parents:
        return f"{DATA_ROOT_NAME}/{p.relative_to(root).as_posix()}".rstrip("/.")
    if base is not None:
        b = Path(base).resolve()
        if not travels or b.parent == p or b.parent in p.parents:
            return os.path.relpath(p, b)
    return p.name


def resolve_recorded(text: str, base: str | os.PathLike) -> Path:
    """The path a manifest records (:func:`portable_path`, or an absolute one from older manifests)
    on this machine: ``$EDGEKIT_DATA/...`` under the shared data root, relative ones from ``base``."""
    if text.startswith(DATA_ROOT_NAME + "/") or text == DATA_ROOT_NAME:
        return shared_data() / text[len(DATA_ROOT_NAME) + 1:]
    p = Path(text)
    return p if p.is_absolute() else Path(base) / p


def data_sha256(root: str | os.PathLike, paths: list[str]) -> str:
    """sha256 over every file's relative path and content: which data exactly, wherever it lives."""
    from edgekit.digest import sha256

    h = sha256()
    for rel in sorted(paths):
        h.update(rel.encode() + b"\0" + sha256((Path(root) / rel).read_bytes()).digest())
    return h.hexdigest()


def portable_command(argv: list[str], base: str | os.PathLike | None = None) -> str:
    """A command line as a manifest records it: every argument that names an existing path is made
    portable (:func:`portable_path`)."""
    out = []
    for arg in argv:
        looks_like_path = os.sep in arg and not arg.startswith("-") and Path(arg).exists()
        out.append(portable_path(arg, base) if looks_like_path else arg)
    if out:
        out[0] = Path(out[0]).name
        if out[0] == "__main__.py":
            out[0] = "edgekit"
    return " ".join(out)
