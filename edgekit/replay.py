# pyright: basic
"""A replay sample: a few of a model's own training crops, shipped with its float weights, so
``edgekit adapt`` can start from a bundle on any machine and not forget the first microscope.

The crops are raw (decoded and resized as training reads them, before any stain normalization: the
adaptation's augmentation and normalization run on them as on the site's crops), drawn stratified
from the training part of the model's split, and stored in one file, ``replay.npz``: a WebP mosaic
of the crops (``mosaic``, encoded bytes; lossy at quality 95: augmentation blurs and re-samples far
more than its artefacts), the label index of each crop in the model's label order (``y``) and its
patient (``groups``). The file is an extra file of the bundle's Keras artifact, so its sha256 is in
the signed manifest like the weights'.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit.errors import BundleError, DataError

if TYPE_CHECKING:
    from edgekit.manifest import Preprocessing

REPLAY_FILE = "replay.npz"
COLUMNS = 40  # crops per mosaic row
WEBP_QUALITY = 95


def sample_training_crops(split_file: Path, labels: list[str], pre: Preprocessing, n: int, seed: int = 0,
                          data_root: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x uint8, y, groups)``: ``n`` crops (stratified by class) of the split's train part, raw."""
    from edgekit.data import load_images
    from edgekit.export.calibration import stratified_sample
    from edgekit.splits import load_split

    split, _ = load_split(split_file, data_root=data_root)
    items = split.parts.get("train", [])
    if not items:
        raise DataError(f"{split_file} has no training part to sample a replay set from")
    try:
        y_all = np.array([labels.index(split.classes[i.label]) for i in items])
    except ValueError:
        raise DataError(f"the split's classes {split.classes} are not the model's labels {labels}") from None
    keep = stratified_sample(y_all, n, seed)
    raw = dataclasses.replace(pre, stain="none")
    x, bad = load_images(Path(split.data_root), [items[i].path for i in keep], raw)
    bad_paths = {p for p, _ in bad}
    kept = [i for i in keep if items[i].path not in bad_paths]
    return x, y_all[kept], np.array([items[i].group for i in kept])


def write_replay(path: Path, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> None:
    """Store crops ``x`` (N, H, W, 3 uint8 RGB) with their labels and patients in one file."""
    import cv2

    n, h, w, c = x.shape
    if c != 3 or n == 0:
        raise DataError("a replay sample needs at least one RGB crop")
    rows = -(-n // COLUMNS)
    grid = np.zeros((rows * COLUMNS, h, w, c), np.uint8)
    grid[:n] = x
    mosaic = grid.reshape(rows, COLUMNS, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, COLUMNS * w, c)
    bgr = np.ascontiguousarray(mosaic[..., ::-1])
    ok, buf = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, WEBP_QUALITY])
    if not ok:
        raise DataError("could not encode the replay mosaic")
    out = io.BytesIO()
    np.savez(out, mosaic=np.frombuffer(buf.tobytes(), np.uint8), y=np.asarray(y, np.int16),
             groups=np.asarray(groups, str), shape=np.array([n, h, w], np.int32))
    Path(path).write_bytes(out.getvalue())


def read_replay(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(x uint8 (N, H, W, 3) RGB, y)`` of a replay file (BundleError when it is malformed)."""
    import cv2

    try:
        with np.load(path, allow_pickle=False) as z:
            n, h, w = (int(v) for v in z["shape"])
            y = z["y"].astype(np.int64)
            bgr = cv2.imdecode(z["mosaic"], cv2.IMREAD_COLOR)
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"{path}: not a replay sample ({exc})") from None
    rows = -(-n // COLUMNS)
    if bgr is None or bgr.shape[:2] != (rows * h, COLUMNS * w) or len(y) != n:
        raise BundleError(f"{path}: replay mosaic does not match its recorded shape")
    rgb = bgr[..., ::-1]
    x = rgb.reshape(rows, h, COLUMNS, w, 3).transpose(0, 2, 1, 3, 4).reshape(rows * COLUMNS, h, w, 3)[:n]
    return np.ascontiguousarray(x), y
