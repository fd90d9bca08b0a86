# pyright: basic
"""``np.percentile`` (the default "linear" method) and ``np.median``, bit for bit, without ``numpy.ma``.

numpy's own versions import ``numpy.ma`` on their first call (``np.percentile`` through ``np.unique``,
``np.median`` through its NaN check): 1.3 MB of Python objects and ~16 ms for a module the device
never uses. These run numpy's steps with the same ufuncs, in the same dtypes (the partition's order
statistics, the virtual index ``(n - 1) q``, the lerp from the nearer end, NaN slices kept NaN), so
results and their types equal numpy's (tests/test_order.py checks them against numpy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def percentile(a: Any, q: float | Sequence[float], axis: int | None = None) -> Any:
    """``np.percentile(a, q, axis=axis)``: a scalar for a scalar ``q``, else an array led by ``q``'s axis."""
    a = np.asanyarray(a)
    n = a.size if axis is None else a.shape[axis]
    if n == 0:
        return np.percentile(a, q, axis=axis)  # numpy's own warning or error
    weak_q = type(q) in (int, float)  # numpy keeps a float32 array's type for a Python scalar q
    qs = np.asarray(np.true_divide(q, 100))
    if qs.ndim > 1 or not (np.all(qs >= 0) and np.all(qs <= 1)):
        raise ValueError("Percentiles must be in the range [0, 100]")
    arr = a.flatten() if axis is None else np.moveaxis(a.copy(), axis, 0)
    virtual = (n - 1) * qs
    floor = np.floor(virtual)
    above = virtual >= n - 1  # the largest value: numpy takes index -1 for both ends
    prev = np.where(above, -1, floor).astype(np.intp)
    nxt = np.where(above, -1, floor + 1).astype(np.intp)
    kth = sorted({0, n - 1, *(int(i) % n for i in prev.ravel()), *(int(i) % n for i in nxt.ravel())})
    arr.partition(kth, axis=0)
    gamma = np.asarray(virtual - prev, dtype=virtual.dtype)
    t = float(gamma) if weak_q else gamma.reshape(virtual.shape + (1,) * (arr.ndim - 1))
    result = _lerp(arr[prev], arr[nxt], t)
    if np.issubdtype(arr.dtype, np.inexact):
        nans = np.isnan(arr[-1, ...])
        if np.any(nans):
            if np.ndim(result) == 0:
                return arr[-1]
            np.copyto(result, arr[-1, ...], where=nans)
    return result


def _lerp(a: np.ndarray, b: np.ndarray, t: Any) -> Any:
    """numpy's quantile interpolation: from ``a`` below a half, from ``b`` from a half on."""
    diff = b - a
    out = np.asarray(np.add(a, diff * t))
    np.subtract(b, diff * (1 - t), out=out, where=np.asarray(t) >= 0.5, casting="unsafe", dtype=out.dtype)
    return out[()] if out.ndim == 0 else out


def median(a: Any, axis: int | None = None) -> Any:
    """``np.median(a, axis=axis)``: the mean of the middle order statistic(s), NaN where a slice has one."""
    a = np.asanyarray(a)
    n = a.size if axis is None else a.shape[axis]
    if n == 0:
        return np.median(a, axis=axis)
    kth = {n // 2 - 1, n // 2} if n % 2 == 0 else {n // 2}
    inexact = np.issubdtype(a.dtype, np.inexact)
    if inexact:
        kth.add(n - 1)
    part = np.partition(a, sorted(kth), axis=axis)
    if part.shape == ():
        return part.item()
    ax = 0 if axis is None else axis
    index = [slice(None)] * part.ndim
    index[ax] = slice(n // 2 - 1 + n % 2, n // 2 + 1)
    result = np.mean(part[tuple(index)], axis=ax)
    if not inexact:
        return result
    last = part.take(-1, axis=ax)
    nans = np.isnan(last)
    if not nans.any():
        return result
    if isinstance(result, np.generic):
        return last
    np.copyto(result, last, where=nans)
    return result
