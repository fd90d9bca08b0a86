"""Calibration and validation data: real images from the run's split, an image folder, or a table.

Everything image-shaped is loaded through ``edgekit.data.load_images`` (the one preprocessing
path), so the int8 ranges and the validation numbers see exactly what the device will see.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import DataError
from edgekit.manifest import Manifest, Preprocessing

TABLE_SUFFIXES = (".csv", ".npy")


@dataclass
class Samples:
    """Model inputs (uint8 images or float features) with optional class indices."""

    x: np.ndarray
    y: np.ndarray | None
    source: str
    held_out: bool = True  # not the calibration data reused: thresholds may be chosen on it

    def __len__(self) -> int:
        return len(self.x)


def stratified_sample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of about ``n`` items keeping each class's share (every class gets at least one)."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    take = np.maximum(1, np.floor(counts / counts.sum() * n).astype(int))
    for k in np.argsort(-counts)[: max(0, n - int(take.sum()))]:  # hand out the rounding remainder
        take[k] += 1
    picked = [rng.choice(np.flatnonzero(labels == c), min(t, cnt), replace=False)
              for c, t, cnt in zip(classes, take, counts, strict=True)]
    return np.sort(np.concatenate(picked))


def _load(root: Path, paths: list[str], labels: np.ndarray, pre: Preprocessing, what: str) -> Samples:
    from edgekit.data import load_images

    if not paths:
        raise DataError(f"no images for {what}")
    x, bad = load_images(root, paths, pre)
    if bad:
        bad_set = {p for p, _ in bad}
        labels = np.array([lbl for p, lbl in zip(paths, labels, strict=True) if p not in bad_set])
    if len(x) == 0:
        raise DataError(f"none of the {len(paths)} {what} images could be read (first: {bad[0][1]})")
    note = f", {len(bad)} unreadable" if bad else ""
    return Samples(x, labels, f"{what}: {len(x)} images from {root}{note}")


def from_split(manifest: Manifest, n_calibration: int, max_validation: int | None, seed: int,
               data_root: Path | None = None, folder: Path | None = None) -> tuple[Samples, Samples]:
    """Calibration = stratified sample of the split's train part; validation = val (else test).
    ``folder`` is the run folder a relative split path is recorded from."""
    from edgekit.paths import resolve_recorded
    from edgekit.splits import load_split

    split_file = manifest.training.get("split_file")
    if not split_file:
        raise DataError("the manifest names no training split file; pass --calibration (and --validation)")
    split, _ = load_split(resolve_recorded(split_file, folder or Path.cwd()), data_root=data_root)
    # the split's class order may differ from the model's labels: map by name
    try:
        remap = np.array([manifest.labels.index(c) for c in split.classes])
    except ValueError as exc:
        raise DataError(f"split classes {split.classes} do not match model labels {manifest.labels}") from exc
    root = Path(split.data_root)

    def part(name: str, n: int | None, what: str) -> Samples:
        items = split.parts.get(name, [])
        y = remap[np.array([i.label for i in items], int)] if items else np.zeros(0, int)
        idx = stratified_sample(y, n, seed) if n is not None else np.arange(len(items))
        return _load(root, [items[i].path for i in idx], y[idx], manifest.preprocessing, what)

    calib = part("train", n_calibration, "calibration (train part)")
    val_name = "val" if split.parts.get("val") else "test"
    return calib, part(val_name, max_validation, f"validation ({val_name} part)")


def from_path(path: Path, manifest: Manifest, input_shape: tuple[int | None, ...], n: int | None,
              seed: int, what: str) -> Samples:
    """An image folder (``root/<class>/...`` labelled, or a flat folder of images), a ``.csv`` or a
    ``.npy`` table of features, checked against the model's input shape."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} data not found: {path}")
    is_image_model = len(input_shape) == 4
    if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        if is_image_model:
            raise DataError(f"{path.name} is a feature table but the model takes images")
        samples = _from_table(path, input_shape, manifest.labels, what)
    elif path.is_dir():
        if not is_image_model:
            raise DataError(
                f"the model's input {list(input_shape)} is not an image; give {what} data as .csv or .npy"
            )
        samples = _from_image_folder(path, manifest, what)
    else:
        raise DataError(f"{what} data must be an image folder, a .csv or a .npy file: {path}")
    if n is not None and len(samples) > n:
        idx = (stratified_sample(samples.y, n, seed) if samples.y is not None
               else np.sort(np.random.default_rng(seed).choice(len(samples), n, replace=False)))
        samples = Samples(samples.x[idx], None if samples.y is None else samples.y[idx], samples.source)
    return samples


def _from_image_folder(root: Path, manifest: Manifest, what: str) -> Samples:
    from edgekit.data import scan_dataset
    from edgekit.device.preprocess import is_image_file

    subdirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if subdirs:
        ds = scan_dataset(root, group_mode="none")
        unknown = [c for c in ds.classes if c not in manifest.labels]
        if unknown:  # class folders that are not labels: use the images without labels
            paths, y = [i.path for i in ds.items], None
        else:
            paths = [i.path for i in ds.items]
            y = np.array([manifest.labels.index(ds.classes[i.label]) for i in ds.items])
    else:
        paths = sorted(p.name for p in root.iterdir() if p.is_file() and is_image_file(p))
        y = None
    if not paths:
        raise DataError(f"no images in the {what} folder {root}")
    s = _load(root, paths, np.zeros(len(paths), int) if y is None else y, manifest.preprocessing, what)
    return Samples(s.x, s.y if y is not None else None, s.source)


def _from_table(path: Path, input_shape: tuple[int | None, ...], labels: list[str], what: str) -> Samples:
    n_features = int(np.prod([d for d in input_shape[1:] if d]))
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from exc
        if arr.ndim == 0 or arr.dtype.kind not in "biuf":
            raise DataError(f"{path.name} is not a table of numbers ({arr.dtype}, shape {list(arr.shape)})")
        rows, y = arr.reshape(len(arr), -1) if arr.ndim > 1 else arr[None], None
    else:
        rows, y = _read_csv(path, labels)
    if rows.size == 0:
        raise DataError(f"the {what} file {path} has no rows")
    if rows.shape[1] == n_features + 1 and y is None:  # a trailing numeric label column
        rows, y = rows[:, :-1], rows[:, -1].astype(int)
    if rows.shape[1] != n_features:
        raise DataError(f"{path.name} has {rows.shape[1]} columns; the model takes {n_features} features")
    if not np.isfinite(rows).all():  # nan/inf would become the int8 range, or the accuracy
        raise DataError(f"{path.name} holds nan or infinite values")
    x = rows.astype(np.float32).reshape((len(rows), *[d for d in input_shape[1:]]))
    return Samples(x, y, f"{what}: {len(x)} rows from {path}")


def _read_csv(path: Path, labels: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Numeric columns; a non-numeric last column is taken as the label (names from ``labels``)."""
    try:
        with open(path, newline="") as f:
            table = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if table and not _numeric(table[0][0]):  # a header row
        table = table[1:]
    if not table:
        return np.zeros((0, 0)), None
    y = None
    if not _numeric(table[0][-1]):
        names = [r[-1].strip() for r in table]
        unknown = sorted(set(names) - set(labels))
        if unknown:
            raise DataError(f"label(s) {unknown} in {path.name} are not among the model labels {labels}")
        y = np.array([labels.index(n) for n in names])
        table = [r[:-1] for r in table]
    try:
        return np.array(table, dtype=np.float64), y
    except ValueError as exc:
        raise DataError(f"{path.name} has a non-numeric feature: {exc}") from exc


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
