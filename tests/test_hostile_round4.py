"""Hostile inputs, round 4: the site commands (cells, check, adapt's data checks), odd manifests of a
trusted bundle, field images, serve uploads and screening databases. Each case here hung, lost a
measurement, or passed silently before its fix."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from device_helpers import GOLDEN

from edgekit.cli import main
from edgekit.errors import DataError


def _site_cells(root: Path, fields=("A01", "A02", "A03")) -> Path:
    """An `edgekit site cells`-style folder: <class>/<field>__<i>.png, 3 parasitized and 9 uninfected per
    field."""
    import cv2

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:60, :60]
    disc = (yy - 30) ** 2 + (xx - 30) ** 2 <= 28 * 28
    for f in fields:
        for i in range(12):
            cls = "Parasitized" if i < 3 else "Uninfected"
            (root / cls).mkdir(parents=True, exist_ok=True)
            img = np.zeros((60, 60, 3))
            img[disc] = (175, 168, 160)
            if i < 3:
                img[(yy - 30) ** 2 + (xx - 28) ** 2 < 70] = (60, 20, 90)
            img[disc] += rng.normal(0, 4, (int(disc.sum()), 3))
            cv2.imwrite(str(root / cls / f"{f}__{i}.png"), np.clip(img, 0, 255).astype(np.uint8))
    return root


def test_a_cells_index_that_is_a_fifo_is_refused_not_waited_on(tmp_path, watchdog):
    """`site check` (and adapt's reading of the labelled parasitemia) opened a cells.json that is a FIFO
    and waited forever for a writer."""
    data = _site_cells(tmp_path / "cells")
    os.mkfifo(data / "cells.json")
    res = CliRunner().invoke(main, ["site", "check", str(GOLDEN), "--data", str(data), "--format", "json"])
    assert res.exit_code in (0, 1) and "Traceback" not in res.output, res.output
    assert json.loads(res.stdout)["cells"] == 36
    from edgekit.adapt import labelled_parasitemia

    with pytest.raises(DataError, match="cells.json.*not a regular file"):
        labelled_parasitemia(data)


def test_a_review_page_that_cannot_be_written_loses_no_measurement(tmp_path, monkeypatch):
    """A --review page on a read-only card: the write failed after the measuring and the report was
    never printed. Now the report comes first, then one line on the page."""
    import edgekit.manifest

    def read_only(path, text):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(edgekit.manifest, "atomic_write_text", read_only)
    data = _site_cells(tmp_path / "cells")
    res = CliRunner().invoke(main, ["site", "check", str(GOLDEN), "--data", str(data), "--review",
                                    str(tmp_path / "labels.html")])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "HOLD" in res.stdout and "AUC" in res.stdout, res.stdout
    page = tmp_path / "labels.html"
    last = res.stderr.strip().splitlines()[-1]
    assert last == f"error: cannot write the review page {page}: Read-only file system", last


def test_site_check_refuses_missing_field_images_before_measuring(tmp_path, monkeypatch):
    """--field-images naming no folder was refused only after every cell had been classified."""
    import edgekit.site_check

    def measured(*_a, **_k):
        raise AssertionError("measured before refusing --field-images")

    monkeypatch.setattr(edgekit.site_check, "_classify_items", measured)
    data = _site_cells(tmp_path / "cells")
    for bad in (tmp_path / "nofields", data / "Parasitized" / "A01__0.png"):
        res = CliRunner().invoke(main, ["site", "check", str(GOLDEN), "--data", str(data),
                                        "--fields", str(bad)])
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        last = res.output.strip().splitlines()[-1]
        assert last == f"error: --field-images: not a folder of field images: {bad}", last


@pytest.mark.parametrize("section", ["images", "categories"])
def test_coco_ids_given_twice_are_refused(tmp_path, section):
    """Two COCO images (or categories) with one id: the later silently took the earlier's boxes (or
    turned every ring into a red blood cell)."""
    from edgekit.device.annotations import read_annotations

    (tmp_path / "A.jpg").write_bytes(b"")
    (tmp_path / "B.jpg").write_bytes(b"")
    coco = {"images": [{"id": 1, "file_name": "A.jpg"}, {"id": 2, "file_name": "B.jpg"}],
            "categories": [{"id": 1, "name": "ring"}, {"id": 2, "name": "red blood cell"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]}]}
    coco[section][1]["id"] = 1
    (tmp_path / "a.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match=f"a.json: two {section} have the id 1"):
        read_annotations(tmp_path / "a.json", tmp_path)


@pytest.mark.parametrize("tables", [["CREATE TABLE records (x INTEGER)", "CREATE TABLE sessions (y TEXT)"],
                                    ["CREATE TABLE users (name TEXT)"]])
def test_another_programs_database_is_refused_and_left_unchanged(tmp_path, tables):
    """`screen --db` on another program's SQLite file added edgekit's tables and columns to it and
    stamped its schema version, then failed on a missing column; reading it named a missing table."""
    import sqlite3

    from edgekit.device.records import RecordsError, RecordStore

    db = tmp_path / "inventory.sqlite"
    con = sqlite3.connect(db)
    for sql in tables:
        con.execute(sql)
    con.commit()
    con.close()
    before = db.read_bytes()
    for read_only in (False, True):
        with pytest.raises(RecordsError, match="is not an edgekit screening database"):
            RecordStore(db, read_only=read_only)
    assert db.read_bytes() == before
    (tmp_path / "empty.sqlite").write_bytes(b"")
    with pytest.raises(RecordsError, match="is not an edgekit screening database"):
        RecordStore(tmp_path / "empty.sqlite", read_only=True)
    RecordStore(tmp_path / "empty.sqlite").close()  # an empty file becomes a new database, as before
    RecordStore(tmp_path / "empty.sqlite", read_only=True).close()


def test_adapt_refuses_missing_base_data_or_field_images_before_scoring_the_site(tmp_path, monkeypatch):
    """`site adapt --base-split GONE.json` or `--field-images NOFOLDER` was refused only after the base
    model had scored every uninfected site cell for the hard negatives (minutes on a real site)."""
    import dataclasses

    import edgekit.adapt as adapt
    from edgekit.adapt_config import AdaptConfig
    from edgekit.manifest import Artifact, Manifest

    base = Manifest(labels=["Parasitized", "Uninfected"], positive_label="Parasitized",
                    artifacts={"keras": Artifact("keras", "model.keras", "0" * 64, 1, "keras")})
    monkeypatch.setattr(adapt, "trainable_model", lambda _p: (base, tmp_path / "model.keras", "0" * 64))

    def scored(*_a, **_k):
        raise AssertionError("scored the site's cells before refusing")

    monkeypatch.setattr(adapt, "hard_negatives", scored)
    data = _site_cells(tmp_path / "cells", tuple(f"F{i:02d}" for i in range(10)))
    cfg = AdaptConfig(block=1)
    with pytest.raises(DataError, match="base model's training data is not here"):
        adapt.adapt_model(tmp_path / "run", data, tmp_path / "out", cfg, base_split=tmp_path / "gone.json")
    with pytest.raises(DataError, match="--field-images: not a folder of field images"):
        adapt.adapt_model(tmp_path / "run", data, tmp_path / "out", dataclasses.replace(cfg, base_share=0),
                          fields_dir=tmp_path / "nofields")


def test_a_field_that_vanishes_mid_batch_is_rejected_and_the_batch_goes_on(tmp_path, monkeypatch):
    """`screen --fields`: a field deleted after the folder was listed (before or after its pixels were
    read) stopped the whole batch with `error: image not found` (its hash was taken after the read).
    Since session 14 the hash is taken first and the bytes read are checked against it; since session 15
    one read gives both: a field gone once read was read whole, and is counted."""
    import shutil

    from device_helpers import FIXTURES

    import edgekit.device.decoding as decoding

    folder = tmp_path / "fields"
    folder.mkdir()
    for name, src in (("f0.jpg", "BloodImage_00014.jpg"), ("f1.jpg", "BloodImage_00099.jpg"),
                      ("f2.jpg", "BloodImage_00099.jpg")):
        shutil.copy(FIXTURES / "fields" / src, folder / name)
    real = decoding.read_file_bytes  # the decoder's one read of a file

    def vanishing(path, *args, **kwargs):
        if Path(path).name == "f1.jpg":
            os.unlink(path)  # gone before it is read
        data = real(path, *args, **kwargs)
        if Path(path).name == "f2.jpg":
            os.unlink(path)  # gone once read
        return data

    monkeypatch.setattr(decoding, "read_file_bytes", vanishing)
    res = CliRunner().invoke(main, ["screen", "--db", str(tmp_path / "s.db"), "--patient", "V", "--fields",
                                    "-m", str(GOLDEN), str(folder)])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert f"rejected {folder / 'f1.jpg'}: file not found" in res.output, res.output
    assert "f2.jpg" not in res.output, res.output
    # f0 and f2 counted whole: the cells of the two fields screened on their own
    monkeypatch.setattr(decoding, "read_file_bytes", real)
    both = tmp_path / "both"
    both.mkdir()
    for name, src in (("f0.jpg", "BloodImage_00014.jpg"), ("f2.jpg", "BloodImage_00099.jpg")):
        shutil.copy(FIXTURES / "fields" / src, both / name)
    alone = CliRunner().invoke(main, ["screen", "--db", str(tmp_path / "t.db"), "--patient", "V", "--fields",
                                      "-m", str(GOLDEN), str(both)])
    cells = re.search(r"session 1: patient V: (\d+) cells", alone.output)
    assert cells and f"session 1: patient V: {cells[1]} cells" in res.output and "1 rejected" in res.output, \
        (alone.output, res.output)


@pytest.mark.parametrize("counts", [{"Parasitized": 5, "Uninfected": -5}, {"Parasitized": "3"},
                                    {"Parasitized": 1.5}, None])
def test_malformed_labelled_counts_are_refused_before_measuring(tmp_path, monkeypatch, counts):
    """cells.json's per-field counts are what whole fields are held to: a negative count held a field to
    500% parasitemia, a string or a missing entry silently fell back to another truth (the crops')."""
    import shutil

    from device_helpers import FIXTURES

    import edgekit.site_check

    def measured(*_a, **_k):
        raise AssertionError("measured before refusing cells.json")

    monkeypatch.setattr(edgekit.site_check, "_classify_items", measured)
    data = _site_cells(tmp_path / "cells")
    rows = [{"field": "A01.jpg", "labelled": {"Parasitized": 3, "Uninfected": 9}},
            {"field": "A02.jpg", "labelled": counts}]
    (data / "cells.json").write_text(json.dumps({"cells": [], "per_field": rows}))
    fields = tmp_path / "fields"
    fields.mkdir()
    shutil.copy(FIXTURES / "fields" / "BloodImage_00014.jpg", fields / "A01.jpg")
    res = CliRunner().invoke(main, ["site", "check", str(GOLDEN), "--data", str(data),
                                    "--fields", str(fields)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "A02.jpg" in res.stderr and "is not a field name with labelled counts" in res.stderr, res.stderr
    from edgekit.adapt import labelled_parasitemia  # adapt holds its whole fields to the same counts

    with pytest.raises(DataError, match="is not a field name with labelled counts"):
        labelled_parasitemia(data)


@pytest.mark.parametrize("bound", [float("nan"), float("inf")])
def test_a_gate_bound_that_every_number_meets_is_refused_at_load(tmp_path, bound):
    """A site gate bounded by NaN (or infinity) passed whatever its test fields measured: the guard then
    vouched for every result of a bundle whose test fields failed."""
    import shutil

    from edgekit.errors import BundleError
    from edgekit.manifest import Gate

    with pytest.raises(BundleError, match="gate: bounds must be finite numbers"):
        Gate(bounds={"parasitemia_error": bound}, measured={"parasitemia_error": 25.0})
    bundle = tmp_path / "b"
    shutil.copytree(GOLDEN, bundle)
    m = json.loads((bundle / "manifest.json").read_text())
    m["domain"] = {"features": ["x"], "mean": [0.0], "inv_cov": [[1.0]], "field_threshold": 1.0,
                   "session_threshold": 1.0, "gate": {"bounds": {"parasitemia_error": bound},
                                                      "measured": {"parasitemia_error": 25.0}}}
    (bundle / "manifest.json").write_text(json.dumps(m))
    res = CliRunner().invoke(main, ["field", "-m", str(bundle), str(GOLDEN.parent / "fields")])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert res.stderr.strip().splitlines()[-1].startswith("error: gate: bounds must be finite numbers")


@pytest.mark.parametrize("change", [{"field_threshold": float("inf")}, {"session_threshold": float("inf")},
                                    {"min_chroma": float("nan")}, {"max_border_lit": float("nan")},
                                    {"mean": [float("nan")]}])
def test_a_domain_that_would_vouch_for_anything_is_refused_at_load(tmp_path, change):
    """An infinite guard threshold, or a NaN chroma or border floor, let every cell, grey image or whole
    field through as "looks like the training cells"."""
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(GOLDEN, bundle)
    m = json.loads((bundle / "manifest.json").read_text())
    m["domain"] = {"features": ["x"], "mean": [0.0], "inv_cov": [[1.0]], "field_threshold": 1.0,
                   "session_threshold": 1.0, "min_chroma": 1.4, "max_border_lit": 0.6, **change}
    (bundle / "manifest.json").write_text(json.dumps(m))
    res = CliRunner().invoke(main, ["classify", "-m", str(bundle), str(GOLDEN.parent / "cells")])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    last = res.stderr.strip().splitlines()[-1]
    assert last == "error: domain: its statistics and thresholds must be finite numbers", last


def test_a_field_split_naming_absent_fields_says_so(tmp_path):
    """A --fields-split that names fields with no cells here (a typo, another site's list) leaves them
    out in one line, instead of silently (the split still needs train and validation fields)."""
    import json

    from edgekit.adapt import field_split
    from edgekit.adapt_config import AdaptConfig

    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["A", "B", "TYPO1"], "val": ["C"], "test": ["D", "TYPO2"]}))
    lines: list[str] = []
    parts = field_split(["A", "B", "C", "D"], AdaptConfig(), split, lines.append)
    assert parts == {"train": ["A", "B"], "val": ["C"], "test": ["D"]}
    assert lines == ["field split: 2 field(s) it names have no cells here, left out (TYPO1, TYPO2)"]
