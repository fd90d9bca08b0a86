"""The size check (edgekit.device.sizes): an image far outside the sizes the model was trained on (a
whole field given as one crop) is refused with the reason on every crop path; a bundle that does
not record them keeps today's behaviour and says so once."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import sign_for_tests
from click.testing import CliRunner
from device_helpers import CELLS, GOLDEN, golden_copy

from edgekit.cli import main
from edgekit.device.sizes import FAR, NOT_RECORDED, fit_sizes, measure_files, outside
from edgekit.errors import BundleError
from edgekit.manifest import ImageSizes, load_manifest

GOLDEN_TFLITE = GOLDEN / "model_int8.tflite"
SIZES = {"min_side": 85.0, "max_side": 196.0, "max_aspect": 1.57, "n": 100, "source": "test"}


def _bundle(tmp_path: Path, sizes: dict | None) -> Path:
    bundle = golden_copy(tmp_path / "bundle")
    d = json.loads((bundle / "manifest.json").read_text())
    d.pop("image_sizes", None)
    if sizes is not None:
        d["image_sizes"] = sizes
    (bundle / "manifest.json").write_text(json.dumps(d))
    (bundle / "signature.json").unlink(missing_ok=True)
    sign_for_tests(bundle)
    return bundle


def _field(path: Path) -> Path:
    """A whole 1280x960 'field': the sample cells tiled (lit, sharp: it passes the quality gates)."""
    import cv2

    crop = cv2.imread(str(sorted(CELLS.glob("*"))[0]))
    crop = cv2.resize(crop, (128, 128))
    cv2.imwrite(str(path), np.tile(crop, (8, 10, 1))[:960, :1280])
    return path


def test_the_rule_refuses_far_larger_smaller_or_longer_images_only():
    s = ImageSizes(**SIZES)
    assert outside(130, 140, s) is None and outside(394, 380, s) is None  # the largest NIH crop
    assert outside(int(196 * FAR), 200, s) is None
    assert "long side" in (outside(480, 640, s) or "") and "1280x960" in (outside(960, 1280, s) or "")
    assert "short side" in (outside(30, 60, s) or "")
    assert "aspect ratio" in (outside(100, 400, s) or "")
    assert outside(960, 1280, None) is None


def test_fitted_sizes_are_the_percentiles_of_the_training_images(tmp_path):
    rng = np.random.default_rng(0)
    shapes = [(int(h), int(w)) for h, w in rng.integers(40, 400, (500, 2))]
    s = fit_sizes(shapes, "test")
    assert s is not None and s.n == 500
    short, long = np.min(shapes, axis=1), np.max(shapes, axis=1)
    assert s.min_side == pytest.approx(np.percentile(short, 1), abs=0.05)
    assert s.max_side == pytest.approx(np.percentile(long, 99), abs=0.05)
    assert s.max_aspect == pytest.approx(np.percentile(long / short, 99), abs=1e-3)
    assert fit_sizes([], "none") is None
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert measure_files([_field(tmp_path / "f.png"), tmp_path / "bad.png"]) == [(960, 1280)]


@pytest.mark.parametrize("bad", [{"min_side": -1, "max_side": 10, "max_aspect": 1},
                                 {"min_side": 50, "max_side": 10, "max_aspect": 1},
                                 {"min_side": 1, "max_side": 10, "max_aspect": 1, "extra": 1},
                                 {"min_side": 1, "max_side": float("inf"), "max_aspect": 1}, "big"])
def test_a_malformed_record_is_refused_in_one_line(tmp_path, bad):
    bundle = golden_copy(tmp_path / "b")
    d = json.loads((bundle / "manifest.json").read_text())
    d["image_sizes"] = bad
    (bundle / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match="image_sizes"):
        load_manifest(bundle)


def test_a_whole_field_given_to_classify_is_refused_with_the_reason(tmp_path):
    """It was called with full confidence, nothing said: the golden bundle has no domain guard."""
    field = _field(tmp_path / "field.png")
    crop = sorted(CELLS.glob("*"))[0]
    res = CliRunner().invoke(main, ["classify", str(field), str(crop), "-m", str(_bundle(tmp_path, SIZES)),
                                    "--format", "jsonl"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert rows[0]["status"] == "rejected" and "outside the image sizes" in rows[0]["reason"]
    assert "1280x960" in rows[0]["reason"] and rows[1]["status"] == "classified"
    assert NOT_RECORDED not in res.output


def test_without_the_record_any_size_is_classified_and_said_once(tmp_path):
    field = _field(tmp_path / "field.png")
    res = CliRunner().invoke(main, ["classify", str(field), str(CELLS), "-m", str(_bundle(tmp_path, None)),
                                    "--format", "jsonl"])
    assert res.exit_code == 0, res.output
    assert res.stderr.count(NOT_RECORDED) == 1
    assert all(json.loads(line)["status"] == "classified" for line in res.stdout.splitlines())


def test_screen_records_the_refusal(tmp_path, monkeypatch):
    db = tmp_path / "s.sqlite"
    monkeypatch.setenv("EDGEKIT_DB", str(db))
    field = _field(tmp_path / "field.png")
    res = CliRunner().invoke(main, ["screen", str(field), str(CELLS), "--patient", "P1",
                                    "-m", str(_bundle(tmp_path, SIZES)), "--json"])
    assert res.exit_code == 0, res.output
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT source_id, status, reason FROM records").fetchall()
    refused = [r for r in rows if r[0].endswith("field.png")]
    assert len(refused) == 1 and refused[0][1] == "rejected" and "outside the image sizes" in refused[0][2]
    assert sum(r[1] == "classified" for r in rows) == len(list(CELLS.glob("*")))


def test_the_default_bundle_records_its_training_sizes_and_stays_trusted():
    from edgekit.device.runtime import load_classifier

    m = load_classifier(None).manifest  # refuses a default bundle whose signature does not verify
    assert m.image_sizes is not None and m.image_sizes.n > 10_000
    assert outside(960, 1280, m.image_sizes) and outside(480, 640, m.image_sizes)
    assert outside(394, 380, m.image_sizes) is None


def test_an_imported_model_records_the_sizes_it_was_trained_on(tmp_path):
    """`model import --trained-on FOLDER`: a brought model gets the check from images like its own."""
    out = tmp_path / "imported"
    res = CliRunner().invoke(main, ["model", "import", str(GOLDEN_TFLITE), "--labels",
                                    "Parasitized,Uninfected", "--scale", "1", "--trained-on", str(CELLS),
                                    "-o", str(out)])
    assert res.exit_code == 0, res.output
    m = load_manifest(out)
    assert m.image_sizes is not None and m.image_sizes.n == len(list(CELLS.glob("*")))
    assert outside(960, 1280, m.image_sizes)
    res = CliRunner().invoke(main, ["model", "import", str(GOLDEN_TFLITE), "--labels", "a,b", "--scale", "1",
                                    "--trained-on", str(tmp_path / "none"), "-o", str(tmp_path / "x")])
    assert res.exit_code != 0 and "--trained-on" in res.output and "Traceback" not in res.output


def test_a_site_bundle_covers_its_own_cells_and_the_base_models(tmp_path):
    """A site bundle kept the base model's sizes: a site whose cells are smaller than NIH's (a lower
    magnification) would have had its own cells refused by its own bundle."""
    from types import SimpleNamespace

    import cv2

    from edgekit.adapt import _site_sizes

    items = []
    for f in ("A01", "A02"):
        for i in range(5):
            cv2.imwrite(str(tmp_path / f"{f}__{i}.png"), np.full((26, 30, 3), 120, np.uint8))
            items.append(SimpleNamespace(path=f"{f}__{i}.png", group=f))
    s = _site_sizes(SimpleNamespace(items=items), {"train": ["A01"], "val": ["A02"]}, tmp_path,
                    ImageSizes(**SIZES))
    assert s is not None and s.n == 5 + SIZES["n"]
    assert outside(26, 30, s) is None and outside(394, 380, s) is None  # the site's cells, NIH's largest
    assert s.min_side == 26 and s.max_side == SIZES["max_side"]
    assert outside(26, 30, ImageSizes(**SIZES)) is not None  # what the base's sizes alone did
