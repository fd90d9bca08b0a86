"""Stain normalization: the contract (manifest field, one function) and what it removes and keeps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.device.preprocess import prepare
from edgekit.device.stain import TARGET_OD, normalize_stain
from edgekit.errors import BundleError
from edgekit.manifest import Manifest, Preprocessing

_LUT = -np.log((np.arange(256) + 1.0) / 256.0)


def _cell(rgb_cell=(190, 150, 160), rgb_dot=(110, 50, 140), size=64, seed=0) -> np.ndarray:
    """A disc on black with a pale centre, a dark purple dot and a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r2 = (yy - size / 2) ** 2 + (xx - size / 2) ** 2
    img = np.zeros((size, size, 3), np.float64)
    disc = r2 < (size * 0.42) ** 2
    img[disc] = rgb_cell
    img[r2 < (size * 0.15) ** 2] = np.array(rgb_cell) * 1.08  # pale centre
    img[disc] += rng.normal(0, 3, (disc.sum(), 3))
    dot = (yy - size * 0.3) ** 2 + (xx - size * 0.65) ** 2 < (size * 0.07) ** 2
    img[dot] = rgb_dot
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), disc, dot


def _restain(img: np.ndarray, scale: float, per: tuple, tint: tuple) -> np.ndarray:
    """Another stain and lamp: OD x scale x per-channel factor + per-channel tint, background kept."""
    od = _LUT[img] * scale * np.array(per) + np.array(tint)
    out = np.clip(np.rint(256 * np.exp(-od) - 1), 0, 255).astype(np.uint8)
    out[img.max(-1) == 0] = 0
    return out


def test_none_is_the_identity_and_old_manifests_mean_none():
    img, _, _ = _cell()
    assert normalize_stain(img, "none") is img
    d = Manifest(labels=["a", "b"]).to_dict()
    d["preprocessing"].pop("stain")  # a manifest written before the field existed
    m = Manifest.from_dict(json.loads(json.dumps(d)))
    assert m.preprocessing.stain == "none"
    np.testing.assert_array_equal(prepare(img, m.preprocessing), img)


def test_unknown_method_is_refused():
    with pytest.raises(BundleError, match="unknown stain normalization"):
        Preprocessing(stain="macenko9")
    with pytest.raises(ValueError, match="unknown stain normalization"):
        normalize_stain(_cell()[0], "macenko9")


def test_background_stays_black_and_the_cell_lands_on_the_target():
    img, disc, dot = _cell()
    out = normalize_stain(img, "od_standard")
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert (out[~disc] == 0).all()
    med = np.median(_LUT[out[disc & ~dot]], axis=0)
    np.testing.assert_allclose(med, TARGET_OD, atol=0.03)


def test_other_stains_and_lamps_look_alike_and_the_dot_stays_dark():
    img, disc, dot = _cell()
    ref = normalize_stain(img, "od_standard").astype(int)
    for scale, per, tint in [(1.8, (1.0, 1.3, 0.9), (0.0, 0.0, 0.0)),  # strong magenta-ish stain
                             (0.7, (1.1, 0.9, 1.0), (0.15, 0.05, 0.12))]:  # pale stain, tinted lamp
        other = _restain(img, scale, per, tint)
        before = np.abs(other.astype(int) - img.astype(int))[disc].mean()
        after = np.abs(normalize_stain(other, "od_standard").astype(int) - ref)[disc].mean()
        assert after < 0.35 * before, (before, after)
        out = normalize_stain(other, "od_standard")
        # the parasite's chromatin stays much darker than its cell, in every channel
        assert (out[dot].mean(0) < out[disc & ~dot].mean(0) - 20).all()


def test_batch_equals_one_by_one_and_blank_crops_pass_unchanged():
    crops = np.stack([_cell(seed=s)[0] for s in range(3)] + [np.zeros((64, 64, 3), np.uint8)])
    batch = normalize_stain(crops, "od_standard")
    for i, c in enumerate(crops):
        np.testing.assert_array_equal(batch[i], normalize_stain(c, "od_standard"))
    np.testing.assert_array_equal(batch[3], crops[3])


def test_prepare_normalizes_after_the_resize():
    big, _, _ = _cell(size=130)
    pre = Preprocessing(stain="od_standard")
    plain = prepare(big, Preprocessing())
    np.testing.assert_array_equal(prepare(big, pre), normalize_stain(plain, "od_standard"))


def test_training_pipeline_normalizes_exactly_like_the_device():
    pytest.importorskip("tensorflow")
    from edgekit.train import TrainConfig, make_dataset

    crops = np.stack([_cell(seed=s)[0] for s in range(5)])
    cfg = TrainConfig(augment=False, stain_norm="od_standard", batch_size=5)
    xb, _ = next(iter(make_dataset(crops, np.zeros(5, np.int32), cfg, training=True)))
    device = np.stack([prepare(c, Preprocessing(stain="od_standard")) for c in crops])
    got = xb.numpy().astype(np.uint8)  # training shuffles: match rows by content
    assert not np.array_equal(np.sort(got.reshape(5, -1), 0), np.sort(crops.reshape(5, -1), 0))
    np.testing.assert_array_equal(np.sort(got.reshape(5, -1), 0), np.sort(device.reshape(5, -1), 0))
