"""Dataset scanning, bad-input errors, grouped splits and the split file round trip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.data import drop_unreadable, nih_patient_id, scan_dataset
from edgekit.errors import DataError
from edgekit.splits import load_split, make_split, save_split


def test_nih_patient_ids():
    assert nih_patient_id("C100P61ThinF_IMG_20150918_144104_cell_162.png") == "P61"
    assert nih_patient_id("C234ThinF_IMG_20151112_150518_cell_7.png") == "C234ThinF"


def test_scan_detects_nih_groups(cell_folder):
    ds = scan_dataset(cell_folder)
    assert ds.classes == ["Parasitized", "Uninfected"]
    assert ds.group_mode == "nih"
    assert len(ds.items) == 72
    assert len({i.group for i in ds.items}) == 12


def test_split_is_grouped_reproducible_and_round_trips(cell_folder, tmp_path):
    ds = drop_unreadable(scan_dataset(cell_folder))
    a = make_split(ds, test_fraction=0.25, val_fraction=0.2, seed=3)
    b = make_split(ds, test_fraction=0.25, val_fraction=0.2, seed=3)
    assert [i.path for i in a.parts["test"]] == [i.path for i in b.parts["test"]]
    groups = {name: {i.group for i in items} for name, items in a.parts.items()}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["val"]
    assert sum(len(v) for v in a.parts.values()) == 72
    assert all(a.parts[p] for p in ("train", "val", "test"))
    digest = save_split(a, tmp_path / "s.json")
    loaded, digest2 = load_split(tmp_path / "s.json")
    assert digest2 == digest
    assert [(i.path, i.label, i.group) for i in loaded.parts["val"]] == [
        (i.path, i.label, i.group) for i in a.parts["val"]
    ]


def test_split_that_does_not_match_the_data(cell_folder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(cell_folder, data)
    sp = make_split(scan_dataset(data), seed=1)
    save_split(sp, tmp_path / "s.json")
    victim = data / sp.parts["test"][0].path
    victim.unlink()
    with pytest.raises(DataError, match="does not match"):
        load_split(tmp_path / "s.json")
    d = json.loads((tmp_path / "s.json").read_text())
    d["parts"]["train"][0][1] = 1 - d["parts"]["train"][0][1]  # a wrong label
    (tmp_path / "s2.json").write_text(json.dumps(d))
    victim.write_bytes(b"")  # path exists again; the label check must still fire
    with pytest.raises(DataError, match="labelled"):
        load_split(tmp_path / "s2.json")


def _png(path: Path, value: int = 128) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((20, 20, 3), value, np.uint8))


def test_bad_folders_raise_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        scan_dataset(tmp_path / "empty")
    _png(tmp_path / "one" / "A" / "x.png")
    with pytest.raises(DataError, match="only one class"):
        scan_dataset(tmp_path / "one")
    _png(tmp_path / "hollow" / "A" / "x.png")
    (tmp_path / "hollow" / "B").mkdir()
    with pytest.raises(DataError, match="no images.*B"):
        scan_dataset(tmp_path / "hollow")
    _png(tmp_path / "corrupt" / "A" / "x.png")
    (tmp_path / "corrupt" / "B").mkdir()
    (tmp_path / "corrupt" / "B" / "y.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="no readable images: B"):
        drop_unreadable(scan_dataset(tmp_path / "corrupt"))


def test_corrupt_file_is_skipped_with_reason(cell_folder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(cell_folder, data)
    (data / "Uninfected" / "C299ThinF_IMG_2015_cell_0.png").write_bytes(b"\x89PNG broken")
    ds = drop_unreadable(scan_dataset(data))
    assert len(ds.items) == 72
    assert [p for p, _ in ds.skipped] == ["Uninfected/C299ThinF_IMG_2015_cell_0.png"]
    assert ds.skipped[0][1]


def test_split_cli(cell_folder, tmp_path):
    out = tmp_path / "split.json"
    res = CliRunner().invoke(main, ["split", str(cell_folder), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and out.is_file()
    assert json.loads(out.read_text())["group_mode"] == "nih"
    res = CliRunner().invoke(main, ["split", str(tmp_path / "missing"), "-o", str(out)])
    assert res.exit_code == 2
    assert "error: data folder not found" in res.output
    assert "Traceback" not in res.output
