"""``edgekit site check``: a tiny real site bundle (tests/bundle_factory.py) measured on generated site
cells through the device runtime; it holds on cells like its own and not on drifted ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.manifest import load_manifest

pytest.importorskip("tensorflow", reason="the tiny bundle is built with TensorFlow")

GREY, MAGENTA = (175, 168, 160), (175, 70, 150)


def _cell(rng: np.random.Generator, colour, parasitized: bool, blur: bool = False) -> np.ndarray:
    import cv2

    side = int(rng.integers(54, 66))
    yy, xx = np.mgrid[:side, :side]
    r = side / 2 - 2
    disc = (yy - side / 2) ** 2 + (xx - side / 2) ** 2 <= r * r
    img = np.zeros((side, side, 3), np.float64)
    img[disc] = np.array(colour) + rng.normal(0, 3, 3)
    if parasitized:
        cy, cx = rng.integers(int(side * 0.35), int(side * 0.65), 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < (side * 0.14) ** 2] = (60, 20, 90)
    img[disc] += rng.normal(0, 4, (int(disc.sum()), 3))
    out = np.clip(img, 25, 255).astype(np.uint8)
    if blur:
        out = cv2.GaussianBlur(out, (0, 0), 6)
    out[~disc] = 0
    return out


def write_site_cells(root: Path, fields: list[str], colour=GREY, seed: int = 0, blur: bool = False,
                     positives: int = 3, negatives: int = 20) -> Path:
    """``edgekit cells``-style folders: FIELD__i.png per class."""
    import cv2

    rng = np.random.default_rng(seed)
    for f in fields:
        for i in range(positives + negatives):
            cls = "Parasitized" if i < positives else "Uninfected"
            (root / cls).mkdir(parents=True, exist_ok=True)
            rgb = _cell(rng, colour, i < positives, blur)
            cv2.imwrite(str(root / cls / f"{f}__{i}.png"), rgb[:, :, ::-1])
    return root


@pytest.fixture(scope="module")
def site_bundle(tmp_path_factory) -> Path:
    """A tiny bundle trained on grey site cells, with the site guard fitted on them."""
    from bundle_factory import make_bundle

    from edgekit.device.field.classify import classify_crops
    from edgekit.device.preprocess import prepare, read_image
    from edgekit.device.runtime import load_classifier
    from edgekit.domain_fit import fit_site_domain
    from edgekit.manifest import Preprocessing, Thresholds

    tmp = tmp_path_factory.mktemp("site")
    train = write_site_cells(tmp / "train", [f"T{i:02d}" for i in range(8)], positives=12, negatives=12)
    files = sorted(train.glob("*/*.png"))
    crops = [read_image(f) for f in files]
    x = np.stack([prepare(c, Preprocessing(input_size=(32, 32))) for c in crops])
    y = np.array([0 if f.parent.name == "Parasitized" else 1 for f in files])  # LABELS order
    bundle = tmp / "bundle"
    make_bundle(bundle, x, y, input_size=(32, 32), epochs=30, sign=False)
    val = write_site_cells(tmp / "val", [f"V{i:02d}" for i in range(3)], seed=1)
    vfiles = sorted(val.glob("*/*.png"))
    # the cutoff as adapt chooses it: as many validation cells called as are labelled (device outputs),
    # halfway to the next cell
    clf = load_classifier(bundle)
    p = np.sort(classify_crops([read_image(f) for f in vfiles], clf))
    k = sum(f.parent.name == "Parasitized" for f in vfiles)
    cut = float(p[-k] + p[-k - 1]) / 2
    m = load_manifest(bundle)
    m.thresholds = Thresholds(positive=max(cut, 0.7), negative=min(cut, 0.3), cutoff=cut, source="test")
    m.domain, _ = fit_site_domain(crops, vfiles, [f.name.split("__")[0] for f in vfiles], source="test site")
    m.save(bundle)
    return bundle


def _set_gate(bundle: Path, bounds: dict | None) -> None:
    """The site gate adapt records (its own test passed: these tests are about later fields)."""
    path = bundle / "manifest.json"
    d = json.loads(path.read_text())
    d["domain"].pop("gate", None)
    if bounds is not None:
        d["domain"]["gate"] = {"bounds": bounds, "measured": {k: (0.0 if k == "parasitemia_error" else 1.0)
                                                             for k in bounds}}
    path.write_text(json.dumps(d))


def test_site_check_holds_on_new_fields_like_its_own(site_bundle, tmp_path):
    _set_gate(site_bundle, None)
    data = write_site_cells(tmp_path / "new", [f"N{i:02d}" for i in range(4)], seed=7)
    res = CliRunner().invoke(main, ["site", "check", str(site_bundle), "--data", str(data)])
    assert res.exit_code == 0, res.output
    assert "HOLDS" in res.stdout and "defaults" in res.stdout
    assert "vouches for 100% of the fields" in res.stdout
    res = CliRunner().invoke(main, ["site", "check", str(site_bundle), "--data", str(data), "--json"])
    out = json.loads(res.stdout)
    assert out["holds"] is True and out["cells"] == 92 and out["positive_cells"] == 12 and out["fields"] == 4
    m = out["measured"]
    assert m["auc"] >= 0.97 and m["parasitemia_error_points"] <= 1.0 and m["guard_ok_share"] == 1.0
    assert out["bounds"] == {"parasitemia_error": 1.0, "auc": 0.97}


def test_site_check_fails_on_drifted_fields_and_keeps_the_manifest_bounds(site_bundle, tmp_path):
    """Magenta, blurred cells: the dot is gone and the guard flags every field; the bundle's own gate
    bounds are the ones held."""
    _set_gate(site_bundle, {"parasitemia_error": 2.0, "auc": 0.9})
    data = write_site_cells(tmp_path / "drifted", [f"D{i:02d}" for i in range(4)], MAGENTA, seed=3, blur=True)
    res = CliRunner().invoke(main, ["site", "check", str(site_bundle), "--data", str(data), "--json"])
    assert res.exit_code == 1, res.output
    out = json.loads(res.stdout)
    assert out["holds"] is False and out["bounds_from"] == "the bundle's site gate (edgekit adapt)"
    assert out["bounds"] == {"parasitemia_error": 2.0, "auc": 0.9}
    assert out["measured"]["guard_ok_share"] == 0.0
    text = CliRunner().invoke(main, ["site", "check", str(site_bundle), "--data", str(data)])
    assert text.exit_code == 1 and "DOES NOT HOLD" in text.stdout and "NOT VALIDATED" in text.stdout
    _set_gate(site_bundle, None)


def test_site_check_does_not_hold_on_a_handful_of_cells(site_bundle, tmp_path):
    """Two fields of one parasitized and one uninfected cell each, called right: AUC 1.0 and an
    interval of [1, 1]; it held before. Too few cells of a class bound nothing."""
    _set_gate(site_bundle, None)
    few = write_site_cells(tmp_path / "few", ["F00", "F01"], seed=7, positives=1, negatives=1)
    res = CliRunner().invoke(main, ["site", "check", str(site_bundle), "--data", str(few), "--json"])
    out = json.loads(res.stdout)
    assert res.exit_code == 1 and out["holds"] is False, res.output
    assert out["measured"]["auc"] == 1.0 and out["measured"]["auc_lower95"] is None
    assert any("auc_lower95 could not be measured" in f for f in out["failures"])


def test_site_check_says_what_cannot_be_measured(site_bundle, tmp_path):
    _set_gate(site_bundle, None)
    only_neg = write_site_cells(tmp_path / "neg", ["A00", "A01"], positives=0)
    res = CliRunner().invoke(main, ["site", "check", str(site_bundle), "--data", str(only_neg)])
    assert res.exit_code == 1 and "auc_lower95 could not be measured" in res.stdout
    bad = [
        (["--data", str(tmp_path / "nope")], "site cells not found"),
        (["--data", str(only_neg), "--fields", str(only_neg / "Uninfected")],
         "holds none of the labelled fields"),
    ]
    (tmp_path / "odd" / "Platelet").mkdir(parents=True)
    bad.append((["--data", str(tmp_path / "odd")], "not labels of the bundle"))
    for args, words in bad:
        r = CliRunner().invoke(main, ["site", "check", str(site_bundle), *args])
        assert r.exit_code == 2 and words in r.stderr and "Traceback" not in r.output, r.output
    _set_gate(site_bundle, {"auc": "high"})
    r = CliRunner().invoke(main, ["site", "check", str(site_bundle), "--data", str(only_neg)])
    assert r.exit_code == 2 and "gate: bounds and measured values must be numbers" in r.stderr
    _set_gate(site_bundle, None)


def test_site_check_whole_fields(site_bundle, tmp_path):
    """--fields: each labelled field is also analysed whole, as `edgekit field` does."""
    import cv2

    from edgekit.benchmarks.synthetic import compose_field
    from edgekit.device.preprocess import read_image

    _set_gate(site_bundle, None)
    data = write_site_cells(tmp_path / "cells", ["W00", "W01"], seed=11)
    images = tmp_path / "fields"
    images.mkdir()
    for k, f in enumerate(["W00", "W01"]):
        crops = [read_image(p) for p in sorted(data.glob(f"*/{f}__*.png"))]
        rgb, _ = compose_field(crops, seed=k, gap=30, background=(225, 222, 215))
        cv2.imwrite(str(images / f"{f}.png"), rgb[:, :, ::-1])
    res = CliRunner().invoke(main, ["site", "check", str(site_bundle), "--data", str(data),
                                    "--fields", str(images), "--json"])
    assert res.exit_code in (0, 1), res.output
    out = json.loads(res.stdout)
    assert out["measured"]["whole_field_parasitemia_error_points"] is not None
    whole = [r["whole_field"] for r in out["per_field"]]
    assert all(w.get("cells", 0) >= 15 for w in whole), whole


def test_site_check_shows_the_labels_it_contradicts(site_bundle, tmp_path):
    """Issue 21: label errors cap what a site's test measures (IML boxes rings and stippled cells as
    plain red cells); --review writes the labelled cells the bundle contradicts most confidently,
    flipped labels first, with their field and box from cells.json."""
    _set_gate(site_bundle, None)
    data = write_site_cells(tmp_path / "cells", [f"R{i:02d}" for i in range(4)], seed=5)
    # two parasitized cells filed as uninfected and two uninfected ones as parasitized: label errors
    wrong = {"Parasitized/R00__0.png": "Uninfected", "Parasitized/R02__1.png": "Uninfected",
             "Uninfected/R01__10.png": "Parasitized", "Uninfected/R03__12.png": "Parasitized"}
    for rel, cls in wrong.items():
        (data / rel).rename(data / cls / Path(rel).name)
    cells = [{"file": f"{p.parent.name}/{p.name}", "box": [1, 2, 3, 4]} for p in sorted(data.glob("*/*.png"))]
    (data / "cells.json").write_text(json.dumps({"cells": cells, "per_field": []}))
    page = tmp_path / "labels.html"
    res = CliRunner().invoke(main, ["site", "check", str(site_bundle), "--data", str(data), "--review",
                                    str(page), "--json"])
    assert res.exit_code in (0, 1), res.output
    d = json.loads(res.stdout)["disagreements"]
    flipped = {f"{cls}/{Path(rel).name}" for rel, cls in wrong.items()}
    first = {c["file"] for c in d["labelled_negative_called_cells"][:2]}
    first |= {c["file"] for c in d["labelled_positive_not_called_cells"][:2]}
    assert first == flipped
    assert d["labelled_negative_called"] >= 2 and d["labelled_positive_not_called"] >= 2
    assert d["labelled_negative_called_cells"][0]["box"] == [1, 2, 3, 4]
    text = page.read_text()
    assert text.count("<figure") == len(d["labelled_negative_called_cells"]) + len(
        d["labelled_positive_not_called_cells"])
    assert "Uninfected/R00__0.png" in text and "data:image/png;base64," in text
    res = CliRunner().invoke(main, ["site", "check", str(site_bundle), "--data", str(data), "--review",
                                    str(tmp_path)])
    assert res.exit_code != 0 and "refusing to write" in res.output and "Traceback" not in res.output


def test_a_bundle_that_failed_its_own_gate_never_holds(site_bundle, tmp_path):
    """New fields that meet every bound do not make a bundle hold whose own test fields failed: every
    result it gives still says NOT VALIDATED."""
    data = write_site_cells(tmp_path / "new", [f"N{i:02d}" for i in range(4)], seed=7)
    path = site_bundle / "manifest.json"
    d = json.loads(path.read_text())
    d["domain"]["gate"] = {"bounds": {"parasitemia_error": 1.0, "auc": 0.97},
                           "measured": {"parasitemia_error": 2.5, "auc": 0.99}}
    path.write_text(json.dumps(d))
    try:
        res = CliRunner().invoke(main, ["site", "check", str(site_bundle), "--data", str(data)])
        assert res.exit_code == 1, res.output
        assert "failed its own test fields" in res.stdout and "DOES NOT HOLD" in res.stdout
    finally:
        _set_gate(site_bundle, None)


def test_site_check_leaves_out_the_fields_the_bundle_was_fitted_on(site_bundle, tmp_path):
    """Cells of the bundle's own training and validation fields (``site_fields.json``) would measure
    what it learnt, not whether it holds: they are left out, said so, and kept only on request."""
    from edgekit.site_fields import FIELDS_SPLIT

    _set_gate(site_bundle, None)
    split = site_bundle / FIELDS_SPLIT
    split.write_text(json.dumps({"train": ["T00"], "val": ["V00"], "test": ["N00"]}))
    try:
        data = write_site_cells(tmp_path / "mixed", ["N00", "N01", "T00", "V00"], seed=7)
        res = CliRunner().invoke(main, ["site", "check", str(site_bundle), "--data", str(data), "--json"])
        out = json.loads(res.stdout)
        assert out["fields"] == 2 and out["cells"] == 46  # N00 (its test field) and N01
        assert any("2 field(s) the bundle was fitted on" in n and "T00, V00" in n for n in out["notes"])
        res = CliRunner().invoke(main, ["site", "check", str(site_bundle), "--data", str(data), "--json",
                                        "--include-fitted"])
        assert json.loads(res.stdout)["fields"] == 4
        fitted_only = write_site_cells(tmp_path / "fitted", ["T00", "V00"], seed=7)
        res = CliRunner().invoke(main, ["site", "check", str(site_bundle), "--data", str(fitted_only)])
        assert res.exit_code != 0 and "Traceback" not in res.output
        assert "every field of these cells (2) is one the bundle was fitted on" in res.output
    finally:
        split.unlink()


@pytest.mark.parametrize("content", ["fifo", "not json", '{"train": "T00"}'])
def test_a_split_file_that_cannot_be_read_is_refused_not_ignored(site_bundle, tmp_path, content, watchdog):
    """A site_fields.json that is there but unreadable would leave every fitted field in, silently:
    refused in one line (and a FIFO never hangs the check)."""
    import os

    from edgekit.site_fields import FIELDS_SPLIT

    _set_gate(site_bundle, None)
    split = site_bundle / FIELDS_SPLIT
    if content == "fifo":
        os.mkfifo(split)
    else:
        split.write_text(content)
    try:
        data = write_site_cells(tmp_path / "new", ["N00", "N01"], seed=7)
        res = CliRunner().invoke(main, ["site", "check", str(site_bundle), "--data", str(data)])
        assert res.exit_code != 0 and "Traceback" not in res.output
        assert FIELDS_SPLIT in res.output
    finally:
        split.unlink()
