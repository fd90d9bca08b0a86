"""The cell finder lets go of its planes once it is done with them (issue 26: the field path's peak
RSS, 8 IML fields with 2 threads, -1.5 MB): the working copy's density, distance and foreground
planes are freed before its regions are listed, and the seeds' labels before the blobs' are made.
Checked with weak references to the arrays, on a real BCCD field."""

from __future__ import annotations

import weakref
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgekit.device.field import segment
from edgekit.device.preprocess import read_image

FIELD = Path(__file__).resolve().parent / "fixtures" / "fields" / "BloodImage_00014.jpg"


class _Spy:
    """OpenCV as the finder sees it, remembering what its labelling and distance calls returned."""

    def __init__(self) -> None:
        self.dist: list[weakref.ref] = []
        self.labels: list[weakref.ref] = []
        self.last_labels_alive: list[bool] = []  # at each labelling call: the previous call's labels

    def __getattr__(self, name: str):
        return getattr(cv2, name)

    def distanceTransform(self, *args, **kwargs):  # noqa: N802 (OpenCV's name)
        out = cv2.distanceTransform(*args, **kwargs)
        self.dist.append(weakref.ref(out))
        return out

    def connectedComponentsWithStats(self, *args, **kwargs):  # noqa: N802 (OpenCV's name)
        self.last_labels_alive.append(bool(self.labels) and self.labels[-1]() is not None)
        out = cv2.connectedComponentsWithStats(*args, **kwargs)
        self.labels.append(weakref.ref(out[1]))
        return out


@pytest.fixture()
def spied(monkeypatch):
    spy = _Spy()
    monkeypatch.setattr(segment, "opencv", lambda: spy)
    return spy


def test_planes_are_freed_before_the_regions_are_listed(spied, monkeypatch):
    densities: list[weakref.ref] = []
    seen: list[tuple[bool, bool]] = []
    make, regions = segment._Density.of.__func__, segment._regions

    def tracked(cls, *args, **kwargs):
        d = make(cls, *args, **kwargs)
        densities.append(weakref.ref(d.along))
        return d

    def listed(markers: np.ndarray, n: int):
        seen.append((any(r() is not None for r in densities), any(r() is not None for r in spied.dist)))
        return regions(markers, n)

    monkeypatch.setattr(segment._Density, "of", classmethod(tracked))
    monkeypatch.setattr(segment, "_regions", listed)
    cells, _ = segment.segment_cells(read_image(FIELD))
    assert cells and densities and spied.dist
    assert seen == [(False, False)]


def test_seed_labels_are_freed_before_the_blobs_are_labelled(spied, monkeypatch):
    starts: list[int] = []
    split = segment._split_touching

    def counted(*args, **kwargs):
        starts.append(len(spied.labels))
        return split(*args, **kwargs)

    monkeypatch.setattr(segment, "_split_touching", counted)
    cells, _ = segment.segment_cells(read_image(FIELD))
    assert cells and len(starts) == 1
    first = starts[0]
    assert len(spied.labels) >= first + 2  # the seeds' labels, then the blobs'
    assert spied.last_labels_alive[first + 1] is False


def test_regions_are_each_labels_pixels_in_order():
    rng = np.random.default_rng(0)
    markers = rng.integers(0, 6, (37, 53)).astype(np.int32)
    for k, (ys, xs) in enumerate(segment._regions(markers, 5), start=1):
        want_y, want_x = np.nonzero(markers == k)
        assert ys.dtype == xs.dtype == np.int32
        assert np.array_equal(ys, want_y) and np.array_equal(xs, want_x)
