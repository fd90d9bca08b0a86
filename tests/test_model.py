"""The ResNet builder: sizes, output, and errors (tiny models; the seed size is checked by count)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("keras")

from edgekit.errors import EdgekitError  # noqa: E402
from edgekit.model import build_resnet, build_transfer, count_macs  # noqa: E402


def test_tiny_resnet_outputs_probabilities():
    m = build_resnet((32, 32, 3), 2, stages=(1, 1, 1), filters=(8, 16, 16, 16))
    assert m.input_shape == (None, 32, 32, 3)
    assert m.output_shape == (None, 2)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    p = np.asarray(m.predict(x, verbose=0))
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    assert m.count_params() < 5000


def test_default_is_the_seed_sized_model():
    m = build_resnet((64, 64, 3), 2)
    assert m.count_params() == 2_163_918
    assert count_macs(m) == pytest.approx(1.06e9, rel=0.02)


def test_gray_input_and_three_classes():
    m = build_resnet((24, 24, 1), 3, stages=(1, 1), filters=(8, 16, 16))
    assert m.output_shape == (None, 3)


def test_builder_errors():
    with pytest.raises(EdgekitError, match="filters needs"):
        build_resnet((32, 32, 3), 2, stages=(1, 1, 1), filters=(8, 16, 16))
    with pytest.raises(EdgekitError, match="unknown backbone"):
        build_transfer("vgg99", (64, 64, 3))
    with pytest.raises(EdgekitError, match="at least 75"):
        build_transfer("inceptionv3", (64, 64, 3))
    with pytest.raises(EdgekitError, match="weights file not found"):
        build_transfer("mobilenetv3small", (64, 64, 3), weights="/nonexistent.weights.h5")


def test_fast_recipes_downsample_in_the_stem():
    from edgekit.model import RECIPES

    assert RECIPES["seed"] == {"stages": (3, 4, 6), "filters": (64, 128, 256, 512)}  # the default
    w8 = build_resnet((64, 64, 3), 2, **RECIPES["w8"])
    fast = build_resnet((64, 64, 3), 2, **RECIPES["fast16p"])
    assert w8.count_params() == 15_558
    # strided stem + 2x2 pool: the residual stages run at 16x16, 8x8 and 4x4
    assert [layer.output.shape[1] for layer in fast.layers if layer.name.startswith("add")] == [16, 8, 4]
    assert count_macs(fast) < count_macs(w8) / 4
    assert all(f % 16 == 0 for f in RECIPES["fast16p"]["filters"])
    with pytest.raises(EdgekitError, match="stem stride"):
        build_resnet((64, 64, 3), 2, stages=(1,), filters=(8, 16), stem_stride=3)
