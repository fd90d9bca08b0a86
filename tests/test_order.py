"""edgekit.device.order: np.percentile and np.median, bit for bit and of the same types, without numpy.ma."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgekit.device.order import median, percentile

DTYPES = (np.uint8, np.int32, np.int64, np.float32, np.float64)
SHAPES_AXES = (((1,), None), ((2,), None), ((3,), 0), ((100,), None), ((1001,), -1), ((5, 7), None),
               ((5, 7), 0), ((5, 7), 1), ((4, 3, 33), 2), ((4, 3, 33), -1))
QS = (0, 50, 99, 100, 2.5, 90.0, 33.3, [25, 50, 75], [2, 98], (70, 90, 97), [5.0, 25.0, 50.0, 75.0],
      np.float64(95))


def _arrays(seed: int):
    rng = np.random.default_rng(seed)
    for dtype in DTYPES:
        for shape, axis in SHAPES_AXES:
            if np.issubdtype(dtype, np.integer):
                x = rng.integers(0, 256 if dtype == np.uint8 else 10_000, size=shape).astype(dtype)
            else:
                x = (rng.standard_normal(shape) * 1000).astype(dtype)
                if seed % 2 and x.size > 3:
                    x.flat[rng.integers(0, x.size)] = np.nan  # a NaN makes its slice NaN
            yield x, axis


def _same(ours, theirs) -> None:
    assert type(ours) is type(theirs), (type(ours), type(theirs))
    assert np.asarray(ours).dtype == np.asarray(theirs).dtype
    assert np.shape(ours) == np.shape(theirs)
    assert np.array_equal(ours, theirs, equal_nan=True), (ours, theirs)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_percentile_equals_numpy(seed):
    for x, axis in _arrays(seed):
        for q in QS:
            _same(percentile(x, q, axis=axis), np.percentile(x, q, axis=axis))
    ties = np.repeat(np.arange(7, dtype=np.float32), 3)  # equal neighbours and many ties
    for q in QS:
        _same(percentile(ties, q), np.percentile(ties, q))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_median_equals_numpy(seed):
    for x, axis in _arrays(seed):
        _same(median(x, axis=axis), np.median(x, axis=axis))
    _same(median([3, 1, 2, 8]), np.median([3, 1, 2, 8]))


def test_input_is_left_as_it_was():
    x = np.arange(20, 0, -1, dtype=np.float32).reshape(4, 5)
    before = x.copy()
    percentile(x, [10, 90], axis=1)
    median(x, axis=0)
    assert np.array_equal(x, before)


def test_out_of_range_percentile_is_refused():
    with pytest.raises(ValueError, match="range"):
        percentile(np.arange(5), 101)


def test_neither_imports_numpy_ma():
    script = ("import sys; import numpy as np; from edgekit.device.order import median, percentile;"
              "x = np.arange(11.0); percentile(x, 90); percentile(x, [2, 98]); median(x); median(x[:4]);"
              "print('numpy.ma' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
