"""`edgekit site cells` judges focus by the site's own rule, set on the fields it is given (issues 29,
22): a microscope with more pixels per cell than NIH or IML has wider edges per pixel, and the shared
floor refused its sharp fields, so the clinic could not cut its cells to adapt on; a blurred field
among them is still left out, and ``cells.json`` records which rule judged them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.device.field.focus import FOCUS_FLOOR, REFERENCE_RADIUS
from tests.device_helpers import smear_field, write_image

ENLARGE = 2.0  # the site's cells twice the size of the synthetic smear's (~55 px radius)
SITE = 6  # sharp fields in the site's folder


def _enlarged(seed: int, sigma: float = 0.0) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A smear field seen with ENLARGE x more pixels per cell (its focus blur ``sigma`` at the smear's
    scale, as out of focus for its cells as sigma 2 is on IML), and the boxes of its cells that lie
    wholly inside it."""
    from edgekit.benchmarks.field_transforms import rescale

    rgb, cells = smear_field(seed, sigma)
    big = rescale(rgb, ENLARGE)
    h, w = big.shape[:2]
    boxes = [tuple(round(ENLARGE * v) for v in (x - r, y - r, x + r + 1, y + r + 1)) for x, y, r in cells]
    return big, [b for b in boxes if b[0] >= 0 and b[1] >= 0 and b[2] <= w and b[3] <= h]


def _site(folder: Path, blurred: dict[str, float]) -> tuple[Path, Path]:
    """SITE enlarged sharp fields (``S0.png``...) and the ``blurred`` ones (name -> sigma), with their
    boxes in an IML annotation file; (images folder, annotation file)."""
    images = folder / "images"
    entries = []
    fields = {f"S{k}": (k, 0.0) for k in range(SITE)}
    fields |= {n: (100 + k, s) for k, (n, s) in enumerate(blurred.items())}
    for name, (seed, sigma) in fields.items():
        rgb, boxes = _enlarged(seed, sigma)
        write_image(images / f"{name}.png", rgb)
        objects = [{"type": "ring" if i % 9 == 0 else "red blood cell",
                    "bbox": {"x": str(b[0]), "y": str(b[1]), "w": str(b[2] - b[0]), "h": str(b[3] - b[1])}}
                   for i, b in enumerate(boxes)]
        entries.append({"image_name": f"{name}.png", "objects": objects})
    ann = folder / "annotations.json"
    ann.write_text(json.dumps(entries))
    return images, ann


def _cells(images: Path, ann: Path, out: Path):
    from edgekit.cli import main

    return CliRunner().invoke(main, ["site", "cells", str(images), "-a", str(ann), "-o", str(out)])


@pytest.fixture(scope="module")
def cut(tmp_path_factory) -> tuple[dict, str]:
    """The site's folder (SITE sharp fields and one blurred with sigma 2 at the cells' scale) cut."""
    folder = tmp_path_factory.mktemp("site")
    images, ann = _site(folder, {"B0": 2.0})
    res = _cells(images, ann, folder / "cells")
    assert res.exit_code == 0, res.output
    return json.loads((folder / "cells" / "cells.json").read_text()), res.output


def test_enlarged_sharp_fields_are_cut_by_the_sites_own_floor(cut):
    """The shared floor refuses every one of these sharp fields (their edges are twice as wide in
    pixels); `site cells` judges them by the floor their own scores set, and cuts their cells."""
    from edgekit.device.field.focus import DEFAULT_RULE
    from edgekit.device.field.quality import field_focus

    assert all(DEFAULT_RULE.reason(field_focus(_enlarged(k)[0])) for k in range(SITE))  # the miss
    index, output = cut
    sharp = [f for f in index["per_field"] if f["field"].startswith("S")]
    assert len(sharp) == SITE and all(f["rejected"] is None for f in sharp), sharp
    assert all(sum(f["cut"].values()) > 0 for f in sharp)
    focus = index["summary"]["focus"]
    # the site's own floor (not the shared one), set at the reference cell radius: its cells are ~59 px
    assert focus["from_fields"] and focus["marks"] and 0 < focus["floor"] != FOCUS_FLOOR
    assert focus["reference"] == REFERENCE_RADIUS
    assert focus["radius"] > 0 and f"site floor {focus['floor']:g}" in focus["how"]
    assert focus["how"] in output  # the log line, told to the user too


def test_a_blurred_field_among_them_is_still_left_out(cut):
    """A field of the same site out of focus (sigma 2 at its cells' scale) is refused by the site's floor,
    with the reason, and the batch carries on."""
    index, output = cut
    blurred = [f for f in index["per_field"] if f["field"] == "B0.png"]
    assert len(blurred) == 1 and (blurred[0]["rejected"] or "").startswith("out of focus"), blurred
    assert f"< {index['summary']['focus']['floor']:g})" in blurred[0]["rejected"]
    assert "B0.png: 0 cells cut" in output and index["summary"]["fields_rejected"] == 1


def test_too_few_fields_keep_the_shared_floor_and_say_so(tmp_path):
    """Under MIN_FIELDS fields say too little about a microscope: the shared floor judges them (as a
    site bundle adapted on them would), and cells.json says so."""
    from edgekit.site_focus import MIN_FIELDS

    images, ann = _site(tmp_path, {})
    for k in range(MIN_FIELDS - 1, SITE):
        (images / f"S{k}.png").unlink()
    data = [e for e in json.loads(ann.read_text()) if (images / e["image_name"]).exists()]
    ann.write_text(json.dumps(data))
    res = _cells(images, ann, tmp_path / "cells")
    assert res.exit_code != 0 and "no labelled cell could be cut" in res.output  # all refused, shared floor
    assert f"{MIN_FIELDS - 1} readable fields (< {MIN_FIELDS}): the shared focus floor stays" in res.output
