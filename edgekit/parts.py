# pyright: basic
"""One part of a split decoded into arrays, and Keras predictions over them: what training and
evaluation share (so ``evaluate`` does not import ``train``)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.manifest import Preprocessing


@dataclass
class Arrays:
    """Decoded images of one split part with labels and patient groups, aligned row by row."""

    x: np.ndarray  # uint8 (N, h, w, C)
    y: np.ndarray  # int32 (N,)
    groups: np.ndarray  # str (N,)
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def load_part(split: Any, part: str, pre: Preprocessing, cache_dir: Path | None,
              log: Callable[[str], None] = print) -> Arrays:
    """Decode one part of the split once (parallel, npz-cached); unreadable files are skipped."""
    from edgekit.data import load_images

    items = split.parts.get(part, [])
    paths = [i.path for i in items]
    if not items:
        h, w = pre.input_size
        empty = np.zeros((0, h, w, pre.channels), np.uint8)
        return Arrays(empty, np.zeros(0, np.int32), np.zeros(0, str), [])
    t0 = time.perf_counter()
    x, bad = load_images(Path(split.data_root), paths, pre, cache_dir=cache_dir)
    bad_set = {p for p, _ in bad}
    keep = [i for i in items if i.path not in bad_set]
    y = np.array([i.label for i in keep], np.int32)
    groups = np.array([i.group for i in keep])
    log(f"{part}: {len(keep)} images decoded in {time.perf_counter() - t0:.1f} s"
        + (f", skipped {len(bad)} ({_reason_counts(bad)})" if bad else ""))
    return Arrays(x, y, groups, [i.path for i in keep], bad)


def _reason_counts(bad: list[tuple[str, str]]) -> str:
    counts = Counter(reason.split(":")[0][:60] for _, reason in bad)
    return "; ".join(f"{n} x {r}" for r, n in counts.most_common(5))


def predict_arrays(model: Any, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Probabilities (N, classes) of uint8 images, batched without the Keras progress bar."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(x).batch(max(batch_size, 64))
    ds = ds.map(lambda b: tf.cast(b, tf.float32)).prefetch(tf.data.AUTOTUNE)
    return np.asarray(model.predict(ds, verbose=0), np.float32)
