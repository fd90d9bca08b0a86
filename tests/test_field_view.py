"""A field photographed through the eyepiece: the smear in a black disc, or in a dark frame.

The two BCCD fixture fields put in a black disc (a phone held to the eyepiece) and in a black frame:
counted, not refused ("cells overlap into one mass", "no red cells found" before), about as many of
the labelled cells that lie wholly inside the view found as on the whole field; a blurred field in a
disc still refused as out of focus (the disc's rim is sharp whatever the smear's focus); two
different fields in the same disc not taken for one (field identity), a retake in it still caught.
A field without a surround is left exactly as it is.
"""

from __future__ import annotations

import numpy as np
import pytest
from device_helpers import fixture_fields as _fields

from edgekit.benchmarks.field_detection import match
from edgekit.benchmarks.field_view import disc, frame, inside_boxes
from edgekit.device.field import count_cells
from edgekit.device.field.identity import same_field, signature
from edgekit.device.field.view import inside_crop, outside_view, within_view


def _frame(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return frame(rgb, 40.5 / min(rgb.shape[:2]))  # 40 px


@pytest.mark.parametrize("view", ["disc", "grey disc", "frame"])
def test_a_field_in_a_dark_surround_is_counted_inside_it(view):
    make = {"disc": lambda x: disc(x, 0.5), "grey disc": lambda x: disc(x, 0.5, 25), "frame": _frame}[view]
    for rgb, gt in _fields():
        whole, _, reason = count_cells(rgb)
        assert reason is None
        seen, inside = make(rgb)
        cells, _, reason = count_cells(seen)
        assert reason is None, reason
        boxes = inside_boxes(gt, inside)
        base = match([c.box for c in whole], boxes) / len(boxes)
        recall = match([c.box for c in cells], boxes) / len(boxes)
        assert recall >= base - 0.15, (view, base, recall)
        # nothing is found in the surround
        assert all(inside[c.y + c.h // 2, c.x + c.w // 2] for c in cells)


def test_a_blurred_field_in_a_disc_is_refused_out_of_focus():
    import cv2

    for rgb, _ in _fields():
        seen, _ = disc(cv2.GaussianBlur(rgb, (0, 0), 3), 0.5)
        _, _, reason = count_cells(seen)
        assert reason is not None and "focus" in reason, reason


def test_different_fields_in_the_same_disc_are_not_one_field():
    (a, _), (b, _) = _fields()[:2]
    assert not same_field(signature(disc(a, 0.5)[0]), signature(disc(b, 0.5)[0]))
    h, w = a.shape[:2]
    moved = np.roll(a, w // 25, axis=1)  # the stage moved 4% under the same eyepiece
    assert same_field(signature(disc(a, 0.5)[0]), signature(disc(moved, 0.5)[0]))


def test_a_field_without_a_surround_is_left_as_it_is():
    for rgb, _ in _fields():
        assert outside_view(rgb) is None
        assert within_view(rgb) is rgb and inside_crop(rgb) is rgb
        dark_cell = rgb.copy()
        dark_cell[100:120, 100:120] = 0  # a dark object away from the border is no surround
        assert outside_view(dark_cell) is None


@pytest.mark.parametrize("view", ["none", "disc"])
def test_a_field_is_searched_for_its_surround_once_and_scores_as_before(monkeypatch, tmp_path, view):
    """`screen --fields` looks for a field's surround once (its focus, its cells and its signature
    each looked again before: ~3 ms a field), and finds what each finds alone."""
    import cv2

    from edgekit.device import screening
    from edgekit.device.field import view as view_module
    from edgekit.device.field.quality import field_focus

    rgb = _fields()[0][0]
    if view == "disc":
        rgb = disc(rgb, 0.5)[0]
    path = tmp_path / "field.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    looked = []
    real = view_module.outside_view

    def counted(img):
        looked.append(img.shape)
        return real(img)

    monkeypatch.setattr(view_module, "outside_view", counted)
    _, _, cut, cells, reason, focus = screening._segment_one(("field", path))
    assert len(looked) == 1
    assert reason is None and focus == field_focus(rgb)
    found, _, _ = count_cells(rgb)
    assert [c.box for c in cells] == [c.box for c in found]
    assert np.array_equal(cut.signature.thumb, signature(rgb).thumb)
