"""One batching loop (device/backends.py: predict_in_batches) for export's validation, `field`,
`classify`/`screen` and the benchmarks: the same batches, in the same order, as the loops it replaced."""

from __future__ import annotations

import numpy as np

from edgekit.device.backends import predict_in_batches


def _recording_model(seen: list[int]):
    def predict(batch):
        batch = np.asarray(batch, dtype=np.float32)
        seen.append(len(batch))
        # depends on the batch it is in, as a real runtime's float sums may: batch boundaries matter
        return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True) + np.float32(len(batch)) / 7
    return predict


def test_batches_and_order_are_those_of_the_old_loops():
    x = np.random.default_rng(0).random((150, 4, 4, 3), dtype=np.float32)
    seen: list[int] = []
    got = predict_in_batches(_recording_model(seen), x, 64)
    assert seen == [64, 64, 22]
    want_seen: list[int] = []
    model = _recording_model(want_seen)
    want = np.concatenate([model(x[i : i + 64]) for i in range(0, len(x), 64)])
    assert np.array_equal(got, want) and want_seen == seen


def test_stack_builds_each_batch_from_a_list():
    crops = [np.full((2, 2, 3), i, np.uint8) for i in range(5)]
    seen: list[int] = []
    got = predict_in_batches(_recording_model(seen), crops, 2, np.stack)
    assert seen == [2, 2, 1]
    assert got.shape == (5, 1)
