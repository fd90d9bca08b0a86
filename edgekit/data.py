# pyright: basic
"""Folder-per-class datasets, patient/group ids, and reading images into uint8 arrays.

Light module (numpy + OpenCV through ``edgekit.device.preprocess``): both the training side and
``edgekit split`` use it; nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.device.pipeline import array_hash
from edgekit.device.preprocess import is_image_file, load_for_model, read_image
from edgekit.errors import DataError, ImageError
from edgekit.manifest import Preprocessing

NIH_PATIENT = re.compile(r"P(\d+)")


@dataclass
class Item:
    path: str  # relative to the dataset root, POSIX separators
    label: int
    group: str


@dataclass
class Dataset:
    root: Path
    classes: list[str]
    items: list[Item]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def nih_patient_id(filename: str) -> str:
    """Patient id of an NIH malaria crop: ``C100P61ThinF_IMG_...`` -> ``P61``; control slides
    without a ``P<n>`` token (``C234ThinF_IMG_...``) are their own patient."""
    name = Path(filename).name
    slide = name.split("_IMG_", 1)[0] if "_IMG_" in name else Path(name).stem
    m = NIH_PATIENT.search(re.split(r"(?i)thin", slide, maxsplit=1)[0])
    return f"P{m.group(1)}" if m else slide


# Named grouping rules: file path relative to its class folder -> group (patient) id. A new rule is
# one entry here (``--groups NAME`` and split files pick it up).
GROUPERS: dict[str, Callable[[str], str]] = {
    "nih": nih_patient_id,
    "none": lambda rel: rel,  # every image its own group
}


def group_ids(mode: str, rel_paths: Sequence[str]) -> list[str]:
    """Each file's group: a rule in :data:`GROUPERS`, or ``regex:PATTERN`` on the file name
    (first capture group, else the whole match; run with a time limit by :mod:`edgekit.group_regex`)."""
    if mode in GROUPERS:
        return [GROUPERS[mode](rel) for rel in rel_paths]
    if mode.startswith("regex:"):
        from edgekit.group_regex import regex_groups

        return regex_groups(mode[len("regex:") :], [Path(rel).name for rel in rel_paths])
    raise DataError(f"unknown group mode {mode!r}: use {', '.join(GROUPERS)}, auto or regex:PATTERN")


def detect_group_mode(names: Sequence[str]) -> str:
    """``nih`` when most files follow NIH's ``<slide>_IMG_<...>`` naming, otherwise ``none``."""
    sample = names[:: max(1, len(names) // 500)]
    hits = sum("_IMG_" in Path(n).name and "thin" in Path(n).name.lower() for n in sample)
    return "nih" if sample and hits / len(sample) > 0.9 else "none"


def scan_dataset(root: str | os.PathLike, group_mode: str = "auto") -> Dataset:
    """List a folder-per-class dataset: ``root/<class>/**/<image>``.

    Raises :class:`DataError` for a missing or empty folder, fewer than two classes, or a class
    without image files. Readability is checked separately by :func:`drop_unreadable`.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root}")
    with_images = _classes_with_images(root, _files_by_class(root))
    classes = sorted(with_images)
    all_names = [f for c in classes for f in with_images[c]]
    mode = detect_group_mode(all_names) if group_mode == "auto" else group_mode
    labelled = [(f, i) for i, c in enumerate(classes) for f in with_images[c]]
    groups = group_ids(mode, [f for f, _ in labelled])
    items = [Item(f, i, g) for (f, i), g in zip(labelled, groups, strict=True)]
    ds = Dataset(root=root, classes=classes, items=items)
    ds.group_mode = mode  # type: ignore[attr-defined]
    return ds


def _files_by_class(root: Path) -> dict[str, list[str]]:
    """Each class folder's image files (paths relative to ``root``, sorted); hidden ones left out."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files_by_class: dict[str, list[str]] = {}
    for d in class_dirs:
        files = sorted(
            p.relative_to(root).as_posix()
            for p in d.rglob("*")
            if p.is_file() and is_image_file(p) and not p.name.startswith(".")
        )
        files_by_class[d.name] = files
    return files_by_class


def _classes_with_images(root: Path, files_by_class: dict[str, list[str]]) -> dict[str, list[str]]:
    """The classes and their files; DataError for no images, an empty class folder or one class."""
    with_images = {c: f for c, f in files_by_class.items() if f}
    if not with_images:
        raise DataError(f"no images found in {root} (expected {root}/<class>/<image files>)")
    empty = [c for c, f in files_by_class.items() if not f]
    if empty and len(with_images) >= 1:
        raise DataError(f"class folder(s) with no images in {root}: {', '.join(empty)}")
    if len(with_images) < 2:
        raise DataError(f"only one class in {root} ({next(iter(with_images))}); need at least two")
    return with_images


def _map_threads(fn: Callable, args: Sequence, workers: int | None = None) -> list:
    # OpenCV releases the GIL while decoding and resizing, so threads scale across cores.
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, args))


def _decode_all(root: Path, rel_paths: Sequence[str]) -> list[tuple[str, str, str]]:
    """``(path, reason or "", digest of the decoded pixels or "")`` for every file, decoded once (the
    pixels: the same picture saved as PNG and as WebP is one picture)."""

    def check(rel: str) -> tuple[str, str, str]:
        try:
            img = read_image(root / rel)
        except ImageError as exc:
            return (rel, str(exc), "")
        return (rel, "", array_hash(img))

    return _map_threads(check, rel_paths)


def drop_unreadable(ds: Dataset) -> Dataset:
    """Decode every file once; drop and record the unusable ones (never a crash). One picture under
    two classes, or under two patients (it would sit in two parts), is refused."""
    decoded = _decode_all(ds.root, [i.path for i in ds.items])
    bad = sorted((rel, reason) for rel, reason, _ in decoded if reason)
    if bad:
        bad_set = {p for p, _ in bad}
        ds.items = [i for i in ds.items if i.path not in bad_set]
        ds.skipped = bad
    _refuse_duplicates(ds, {rel: digest for rel, _, digest in decoded if digest})
    present = {i.label for i in ds.items}
    unreadable = [c for k, c in enumerate(ds.classes) if k not in present]
    if unreadable:
        raise DataError(f"class(es) with no readable images: {', '.join(unreadable)}")
    return ds


def _refuse_duplicates(ds: Dataset, digests: dict[str, str]) -> None:
    first: dict[str, Item] = {}
    for item in ds.items:
        other = first.setdefault(digests[item.path], item)
        if other.label != item.label:
            raise DataError(f"{other.path} and {item.path} are the same picture under two classes"
                            f" ({ds.classes[other.label]}, {ds.classes[item.label]}): remove the wrong one")
        if other.group != item.group:
            raise DataError(f"{other.path} and {item.path} are the same picture under two patients"
                            f" ({other.group}, {item.group}): it would be both trained and tested on")


def load_images(
    root: Path,
    rel_paths: Sequence[str],
    pre: Preprocessing,
    cache_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode and prepare images in parallel into one uint8 array (N, H, W, C).

    Unreadable files are returned as ``(path, reason)`` and their rows removed. With
    ``cache_dir`` the array is saved under a key of (file list, preprocessing), so a second run
    (or a resumed one) skips decoding entirely.
    """
    key = hashlib.sha256(
        repr((str(root.resolve()), list(rel_paths), sorted(vars(pre).items()))).encode()
    ).hexdigest()[:20]
    cache = cache_dir / f"images-{key}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            bad = [tuple(x) for x in z["bad"].tolist()] if z["bad"].size else []
            return z["x"], bad

    def load(rel: str) -> np.ndarray | str:
        try:
            return load_for_model(root / rel, pre)
        except ImageError as exc:
            return str(exc)

    h, w = pre.input_size
    out = np.empty((len(rel_paths), h, w, pre.channels), np.uint8)
    bad: list[tuple[str, str]] = []
    keep = np.ones(len(rel_paths), bool)
    step = 512
    for start in range(0, len(rel_paths), step):
        chunk = rel_paths[start : start + step]
        for j, r in enumerate(_map_threads(load, chunk)):
            if isinstance(r, str):
                bad.append((chunk[j], r))
                keep[start + j] = False
            else:
                out[start + j] = r
        if progress:
            progress(len(chunk))
    x = out[keep]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # one temporary name per process: two processes caching the same images (distributed workers,
        # two runs) must not rename each other's half-written file away
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, x=x, bad=np.array(bad, dtype=str).reshape(-1, 2))
        os.replace(tmp, cache)
    return x, bad
