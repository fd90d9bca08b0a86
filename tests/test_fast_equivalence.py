"""The fast crop-path functions equal their straightforward versions: the domain guard's features
(OpenCV masks and histograms vs numpy boolean indexing and ``np.percentile``), the border test and
the stain normalization (a per-channel table vs pixel by pixel), on generated crops (cells of many
sizes, shapes and colours on black, thin cells with no interior, crops lit all round, flat and noisy
ones) and on real NIH crops; and the field path's leaner steps (the finder's regions and hole
densities over labelled pixels only, the colour swap in place) on generated masks and real files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgekit.device.domain import DARK_LEVEL, RIM, border_lit, crop_features
from edgekit.device.preprocess import read_image
from edgekit.device.stain import MIN_PIXELS, MIN_SPREAD, TARGET_OD, TARGET_SPREAD, normalize_stain

ROOT = Path(__file__).resolve().parents[1]
REAL = sorted((ROOT / "examples" / "cells").rglob("*.webp")) + sorted(
    (ROOT / "tests" / "fixtures" / "cells").glob("*.webp"))


def reference_features(rgb: np.ndarray) -> np.ndarray | None:
    """The guard's features as first written: boolean masks, Lab pixels as float32, np.percentile."""
    fg = rgb.max(axis=2) > DARK_LEVEL
    n = int(fg.sum())
    if n < 16:
        return None
    k = max(3, int(RIM * 2.0 * np.sqrt(n / np.pi)) | 1)
    inner = cv2.erode(fg.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
    lab = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2LAB)[inner if inner.sum() >= 16 else fg]
    lab = lab.astype(np.float32)
    L, a, b = lab[:, 0], lab[:, 1], lab[:, 2]
    lq = np.percentile(L, [5, 25, 50, 75])
    return np.array([np.log(2.0 * np.sqrt(n / np.pi)), n / fg.size, lq[2], np.median(a), np.median(b),
                     lq[0], np.percentile(a, 95), np.percentile(b, 5), lq[3] - lq[1]], dtype=np.float64)


def reference_border_lit(rgb: np.ndarray, dark_level: int = 16) -> float:
    lit = rgb.max(axis=2) > dark_level if rgb.ndim == 3 else rgb > dark_level
    return float(np.concatenate([lit[0], lit[-1], lit[1:-1, 0], lit[1:-1, -1]]).mean())


def generated_crops(seed: int = 0, n: int = 120) -> list[np.ndarray]:
    """Stained-looking cells on black: random size (5-200 px), ellipse, colour, texture, dark spots;
    plus thin lines (no interior after erosion), crops lit all round, flat and tiny ones."""
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(5, 200, 2))
        img = np.zeros((h, w, 3), np.uint8)
        kind = i % 6
        if kind == 5:  # a thin line: too few interior pixels, the whole foreground is used
            cv2.line(img, (0, int(rng.integers(h))), (w - 1, int(rng.integers(h))),
                     tuple(int(c) for c in rng.integers(30, 255, 3)), 1)
        else:
            mask = np.zeros((h, w), np.uint8)
            cv2.ellipse(mask, (w // 2, h // 2), (max(1, int(w * rng.uniform(0.2, 0.55))),
                        max(1, int(h * rng.uniform(0.2, 0.55)))), float(rng.uniform(0, 180)), 0, 360, 255, -1)
            base = rng.integers(40, 255, 3)
            noise = rng.normal(0, rng.uniform(0, 40), (h, w, 3))
            cell = np.clip(base + noise, 0, 255).astype(np.uint8)
            if kind == 1:  # a dark purple parasite spot
                cv2.circle(cell, (w // 3, h // 3), max(1, min(h, w) // 8), (90, 40, 120), -1)
            if kind == 2:  # lit all round (a field or a photo, not a cell on black)
                mask[:] = 255
            if kind == 3:  # flat colour: many equal values (ties at every percentile)
                cell[:] = base.astype(np.uint8)
            img[mask > 0] = cell[mask > 0]
        crops.append(img)
    crops += [np.zeros((40, 40, 3), np.uint8), np.full((3, 3, 3), 200, np.uint8),
              np.full((1, 50, 3), 100, np.uint8), np.full((50, 1, 3), 100, np.uint8)]
    return crops


def _assert_same_features(crops: list[np.ndarray]) -> int:
    measured = 0
    for rgb in crops:
        ref, fast = reference_features(rgb), crop_features(rgb)
        assert (ref is None) == (fast is None), rgb.shape
        if ref is not None:
            np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-5)
            measured += 1
    return measured


def test_features_equal_reference_on_generated_crops() -> None:
    crops = generated_crops()
    assert _assert_same_features(crops) >= 100


@pytest.mark.skipif(not REAL, reason="no sample crops")
def test_features_equal_reference_on_real_crops() -> None:
    crops = [read_image(f) for f in REAL]
    # and the same crops resized (odd/even pixel counts) and re-stained
    crops += [cv2.resize(c, None, fx=0.7, fy=0.9) for c in crops]
    crops += [np.ascontiguousarray(c[:, :, ::-1]) for c in crops]
    assert _assert_same_features(crops) == len(crops)


def test_border_lit_equals_reference() -> None:
    for rgb in generated_crops(seed=1, n=60):
        assert border_lit(rgb) == reference_border_lit(rgb)
        gray = rgb[:, :, 1]
        assert border_lit(gray) == reference_border_lit(gray)


_OD = -np.log((np.arange(256, dtype=np.float32) + 1.0) / 256.0)


def reference_od_standard(img: np.ndarray) -> np.ndarray:
    """``od_standard`` as first written: every cell pixel through the float32 formula."""
    c = img.shape[-1]
    cell = (img > 20).any(axis=-1)
    pixels = img[cell]
    n = len(pixels)
    if n < MIN_PIXELS:
        return img
    ranks = np.array([n // 4, n // 2, (3 * n) // 4])
    q = np.empty((3, c), np.float32)
    for k in range(c):
        q[:, k] = _OD[np.sort(pixels[:, k])[ranks]]
    spread = max(float((q[0] - q[2]).mean()), float(MIN_SPREAD))
    target = TARGET_OD[:c] if c == 3 else TARGET_OD.mean(keepdims=True)
    od = target + (_OD[pixels] - q[1]) * (TARGET_SPREAD / spread)
    out = img.copy()
    out[cell] = np.clip(np.rint(256.0 * np.exp(-od) - 1.0), 0, 255).astype(np.uint8)
    return out


def test_stain_normalization_equals_reference() -> None:
    crops = [cv2.resize(c, (64, 64), interpolation=cv2.INTER_AREA) for c in generated_crops(seed=2, n=90)]
    crops += generated_crops(seed=3, n=30)  # unresized, tiny and empty ones too
    if REAL:
        crops += [read_image(f) for f in REAL]
    changed = 0
    for img in crops:
        fast, ref = normalize_stain(img, "od_standard"), reference_od_standard(img)
        np.testing.assert_array_equal(fast, ref)
        changed += not np.array_equal(fast, img)
        one = np.ascontiguousarray(img[:, :, :1])  # one channel: the numpy route
        np.testing.assert_array_equal(normalize_stain(one, "od_standard"), reference_od_standard(one))
    assert changed >= 80
    batch = np.stack(crops[:40])
    np.testing.assert_array_equal(normalize_stain(batch, "od_standard"),
                                  np.stack([reference_od_standard(c) for c in batch]))


def test_header_probe_opens_what_pillow_opens() -> None:
    """The signature-picked plugin reads the same header as Pillow's own search, for every format a
    crop comes in (and a file whose signature lies is still identified, or refused, as before)."""
    import io

    from PIL import Image

    from edgekit.device.decoding import _open_header, _orientation

    rgb = generated_crops(seed=4, n=1)[0]
    blobs = [cv2.imencode(ext, rgb)[1].tobytes() for ext in (".png", ".jpg", ".webp", ".bmp", ".tiff")]
    blobs.append(b"\x89PNG\r\n\x1a\n" + blobs[1][8:])  # PNG signature on JPEG data: PNG's plugin refuses
    for data in blobs:
        try:
            ref = Image.open(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - whatever Pillow raises, ours must raise too
            with pytest.raises(type(exc)):
                _open_header(data)
            continue
        im = _open_header(data)
        assert (im.size, im.format, im.mode, _orientation(im)) == (ref.size, ref.format, ref.mode,
                                                                   _orientation(ref))


def test_simple_webp_header_read_as_pillow_reads_it() -> None:
    """The WebP header read without Pillow gives Pillow's size (not animated, no orientation) for
    every file it takes, real crops and generated ones, lossy and lossless, and their headers
    damaged byte by byte, cut short, padded or given a trailing chunk; it leaves most to Pillow."""
    from PIL import Image

    from edgekit.device.decoding import _open_header, _orientation, simple_webp_size

    def pillow(data: bytes) -> object:
        Image.MAX_IMAGE_PIXELS = None
        try:
            im = _open_header(data)
            return im.size, im.format, getattr(im, "is_animated", False), _orientation(im)
        except Exception as exc:  # noqa: BLE001 - whatever Pillow raises
            return type(exc).__name__

    rng = np.random.default_rng(7)
    blobs = [p.read_bytes() for p in REAL]
    for _ in range(12):
        h, w = (int(v) for v in rng.integers(1, 300, 2))
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        quality = int(rng.integers(1, 101))
        blobs += [cv2.imencode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, quality])[1].tobytes(),
                  cv2.imencode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes(),  # lossless
                  cv2.imencode(".webp", np.dstack([img, img[:, :, 0]]))[1].tobytes()]
    variants = list(blobs)
    for data in blobs:
        for pos in range(12, 34):
            for v in {0, 1, 0x2F, 0x9D, 0xFF, data[pos] ^ 1, data[pos] ^ 0x20}:
                variants.append(data[:pos] + bytes([v]) + data[pos + 1:])
        variants += [data[:cut] for cut in (5, 29, 30, len(data) - 1)] + [data + b"\0\0"]
        extra = bytearray(data + b"EXIF\x02\x00\x00\x00ab")
        extra[4:8] = (len(extra) - 8).to_bytes(4, "little")
        variants.append(bytes(extra))
    taken = 0
    for data in variants:
        size = simple_webp_size(data)
        if size is not None:
            taken += 1
            assert pillow(data) == (size, "WEBP", False, 1)
    assert all(simple_webp_size(data) for data in blobs)  # every intact file is read without Pillow
    assert taken < len(variants)  # and the damaged ones it cannot vouch for are left to Pillow


def reference_sharpness(rgb: np.ndarray, dark_level: int = 16) -> float:
    """The blur measure as first written: the Laplacian in float64, numpy's median of the lit pixels."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    lit = gray[gray > dark_level]
    core_level = max(dark_level, 0.6 * float(np.median(lit))) if lit.size else dark_level
    k = max(3, int(min(gray.shape[:2]) * 0.1) | 1)
    interior = cv2.erode((gray > core_level).astype(np.uint8) * 255, np.ones((k, k), np.uint8))
    lap = cv2.Laplacian(gray, cv2.CV_64F)
    _, std = cv2.meanStdDev(lap, mask=interior if cv2.countNonZero(interior) >= 16 else None)
    return float(std[0, 0]) ** 2


def test_sharpness_equals_float64_laplacian() -> None:
    """The quality gate's blur measure is bit for bit the float64 Laplacian's, on generated crops
    and on salt-and-pepper ones (the Laplacian's extremes, +-4 x 255)."""
    from edgekit.device.quality import measure

    rng = np.random.default_rng(5)
    crops = generated_crops(seed=5, n=60)
    crops += [(rng.integers(0, 2, (h, w, 3)) * 255).astype(np.uint8) for h, w in ((40, 40), (97, 131))]
    crops += [read_image(f) for f in REAL]
    for rgb in crops:
        if min(rgb.shape[:2]) >= 3:
            assert measure(rgb)["sharpness"] == reference_sharpness(rgb), rgb.shape


def test_review_png_gives_back_the_pixels() -> None:
    """A crop kept for review decodes to exactly the pixels the model was given."""
    from edgekit.device.review import encode_png

    crops = generated_crops(seed=6, n=30) + [read_image(f) for f in REAL]
    crops.append(np.ascontiguousarray(np.random.default_rng(6).integers(0, 256, (37, 53, 3), np.uint8)[::-1]))
    for rgb in crops:
        back = cv2.imdecode(np.frombuffer(encode_png(rgb), np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(cv2.cvtColor(back, cv2.COLOR_BGR2RGB), rgb)


def _label_images() -> list[np.ndarray]:
    """Generated masks and label images: blobs of many sizes, one that fills the image, none."""
    rng = np.random.default_rng(3)
    out = [np.zeros((40, 50), np.uint8), np.full((31, 17), 255, np.uint8)]
    for h, w in ((120, 160), (97, 203), (480, 640)):
        mask = np.zeros((h, w), np.uint8)
        for _ in range(h * w // 900):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            r = int(rng.integers(3, 25))
            cv2.circle(mask, centre, r, 255, -1)
            cv2.circle(mask, centre, max(1, r // 3), 0, -1)  # a pale centre: a hole
        out.append(mask)
    return out


def test_region_pixels_are_those_of_a_sort_of_the_whole_field():
    """The finder's regions sort only the labelled pixels; the same pixels, in the same order, as
    the stable sort of every pixel it first did."""
    from edgekit.device.field.segment import _regions

    for mask in _label_images():
        n, markers = cv2.connectedComponents(mask, connectivity=8)
        flat = markers.ravel()
        order = np.argsort(flat, kind="stable")
        ends = np.cumsum(np.bincount(flat, minlength=n))
        reference = [np.divmod(order[ends[k - 1]:ends[k]], mask.shape[1]) for k in range(1, n)]
        ours = _regions(markers, n - 1)
        assert len(ours) == len(reference) == n - 1
        for (ys, xs), (ry, rx) in zip(ours, reference, strict=True):
            assert np.array_equal(ys, ry) and np.array_equal(xs, rx)


def test_filled_holes_are_those_of_the_whole_field_sums():
    """Which holes the finder fills: the hole densities summed over the holes' pixels only give the
    same holes as sums over the whole field (float64 of every pixel)."""
    from edgekit.device.field.segment import _fill_holes

    rng = np.random.default_rng(4)
    for mask in _label_images():
        density = cv2.GaussianBlur(rng.integers(0, 256, mask.shape).astype(np.uint8), (5, 5), 0)
        for min_density, max_area, solidity in ((60.0, 0.0, 0.0), (128.0, 300.0, 0.8), (250.0, 50.0, 0.5)):
            h, w = mask.shape
            pad = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
            cv2.floodFill(pad, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 255)
            holes = np.where(pad[1:-1, 1:-1] == 0, 255, 0).astype(np.uint8)
            n, labels, stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=4)
            area = stats[:, cv2.CC_STAT_AREA]
            mean = np.bincount(labels.ravel(), density.ravel().astype(np.float64), minlength=n)
            mean /= np.maximum(area, 1)
            dense = mean >= min_density
            dense[0] = False
            ours = _fill_holes(mask, density, min_density, max_area, solidity)
            # every dense hole filled; a hole not dense is filled only when small and convex
            filled = np.bincount(labels.ravel(), (ours > 0).ravel(), minlength=n) == area
            assert np.array_equal(filled[1:] & ~(area[1:] <= max_area), dense[1:] & ~(area[1:] <= max_area))
            assert filled[dense].all()


def test_read_image_swaps_colours_in_place_as_a_copy_would():
    for path in REAL[:5] + sorted((ROOT / "tests" / "fixtures" / "fields").glob("*.jpg")):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert np.array_equal(read_image(path), bgr[:, :, ::-1])
