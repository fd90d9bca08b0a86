"""Hostile inputs, round 5: JPEG kinds phones, scanners and archives write (CMYK, YCCK, progressive
with restart markers, AVIF or HEIC named .jpg, a huge ICC or EXIF block, a sideways phone photo,
12-bit), on every image entry point: each is read as the same picture (EXIF rotation honoured) or
refused in one line naming what it is, and the batch goes on."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from device_helpers import CELLS, GOLDEN
from jpeg_kinds import ARITHMETIC_SKIP, jpeg_kinds

from edgekit.cli import main
from edgekit.device.preprocess import read_image
from edgekit.errors import ImageError

FIELD = Path(__file__).resolve().parent / "fixtures" / "fields" / "BloodImage_00099.jpg"
CROP = CELLS / "parasitized_a.webp"


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpeg_kinds")
    return {"crop": jpeg_kinds(read_image(CROP), root / "crop"),
            "field": jpeg_kinds(read_image(FIELD), root / "field")}


@pytest.mark.parametrize("what", ["crop", "field"])
def test_every_kind_reads_as_the_same_picture_or_is_refused_naming_it(kinds, what):
    """A 12-bit JPEG and a HEIC photo named .jpg were refused as 'corrupt, not an image': the user
    could not tell what to do with a sound file."""
    want = read_image(CROP if what == "crop" else FIELD).astype(int)
    for name, (path, refusal) in kinds[what].items():
        if refusal is None:
            got = read_image(path)
            assert got.shape == want.shape, name  # the sideways photo is turned upright
            assert np.abs(got.astype(int) - want).mean() < 3, name
        else:
            with pytest.raises(ImageError) as exc:
                read_image(path)
            line = str(exc.value)
            assert refusal in line and "\n" not in line and "corrupt" not in line, (name, line)


def test_an_arithmetic_coded_jpeg():
    pytest.skip(ARITHMETIC_SKIP)


def _refused(kinds: dict) -> set[str]:
    return {p.name for p, r in kinds.values() if r is not None}


def test_classify_and_screen_take_every_kind_as_a_crop(kinds, tmp_path):
    files = [str(p) for p, _ in kinds["crop"].values()]
    res = CliRunner().invoke(main, ["classify", *files, "-m", str(GOLDEN), "--format", "jsonl"])
    assert res.exit_code == 1, res.output  # the refused ones: the batch ran to its end
    rows = {Path(r["path"]).name: r
            for r in map(json.loads, res.stdout.splitlines())}
    assert len(rows) == len(files)
    plain = rows["plain.jpg"]["label"]
    for name, row in rows.items():
        if name in _refused(kinds["crop"]):
            assert row["status"] == "failed" and row["reason"], name
        else:
            assert row["status"] == "classified" and row["label"] == plain, (name, row)
    db = tmp_path / "s.sqlite"
    res = CliRunner().invoke(main, ["screen", *files, "--patient", "P1", "-m", str(GOLDEN), "--db", str(db)])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    with sqlite3.connect(db) as con:
        rows = dict(con.execute("SELECT source_id, status FROM records").fetchall())
    assert {Path(s).name: st for s, st in rows.items()} == {
        Path(f).name: "failed" if Path(f).name in _refused(kinds["crop"]) else "classified" for f in files}


def test_field_and_screen_fields_take_every_kind_as_a_field(kinds, tmp_path):
    files = [str(p) for p, _ in kinds["field"].values()]
    res = CliRunner().invoke(main, ["field", *files, "-m", str(GOLDEN), "--format", "jsonl"])
    assert res.exit_code == 1, res.output  # the refused ones
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    fields = {Path(r["field"]).name: r for r in lines if "field" in r}
    assert len(fields) == len(files)
    cells = fields["plain.jpg"]["cells"]
    assert cells > 5
    for name, f in fields.items():
        if name in _refused(kinds["field"]):
            assert f["rejected"], name
        else:  # the same field: the same cells, give or take one on a border
            assert not f["rejected"] and abs(f["cells"] - cells) <= 1, (name, f["cells"])
    db = tmp_path / "f.sqlite"
    res = CliRunner().invoke(main, ["screen", "--fields", *files, "--patient", "P2", "-m", str(GOLDEN),
                                    "--db", str(db)])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    for name in _refused(kinds["field"]):
        assert sum(name in line for line in res.output.splitlines()) == 1, res.output
    with sqlite3.connect(db) as con:
        counted = con.execute("SELECT COUNT(*) FROM fields").fetchone()[0]
    assert counted == 1  # every readable kind is the same field, counted once


def test_serve_takes_every_kind_as_an_upload(kinds, tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from test_serve import TOKEN, _client, _session, _station, _upload

    station = _station(tmp_path)
    try:
        client = _client(station, token=TOKEN)
        for kind in ("crop", "field"):
            sid = _session(client, patient=f"P-{kind}")
            for name, (path, refusal) in kinds[kind].items():
                r = _upload(client, sid, path.read_bytes(), kind, path.name)
                if refusal is None:
                    assert r.status_code == 200, (kind, name, r.text)
                else:
                    assert r.status_code in (400, 415, 422), (kind, name, r.status_code)
                    assert refusal in r.json()["detail"], (kind, name, r.text)
    finally:
        station.close()


def test_site_cells_cuts_an_exif_turned_field_in_the_frame_its_boxes_were_drawn_in(tmp_path):
    """A phone photo with an EXIF orientation whose boxes were drawn on the stored pixels (as tools
    that ignore EXIF draw them) stopped the whole `site cells` run ('the annotation says 640x480 but
    the image is 480x640'); without a stated size its boxes could land on the wrong cells. Now the
    frame is the one the annotation's size (or where its boxes fit) names, and a half turn, which
    neither tells apart, leaves that field out with the reason."""
    from PIL import Image

    rgb = read_image(FIELD)
    xml = FIELD.with_suffix(".xml").read_text()
    folder = tmp_path / "fields"
    folder.mkdir()

    def put(name: str, pixels: np.ndarray, orientation: int, size: bool = True) -> None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f"{name}.jpg", quality=95,
                                                           exif=exif.tobytes())
        text = xml.replace(FIELD.name, f"{name}.jpg")
        if not size:
            text = text[:text.index("<size>")] + text[text.index("</size>") + len("</size>"):]
        (folder / f"{name}.xml").write_text(text)

    put("plain", rgb, 1)
    put("boxes_on_stored", rgb, 6)  # shown turned; the boxes fit the stored pixels
    put("boxes_on_stored_no_size", rgb, 6, size=False)
    put("boxes_on_upright", np.rot90(rgb, 1), 6)  # stored turned back: shown as the boxes were drawn
    put("half_turn", rgb, 3)  # same size either way: which frame cannot be told
    res = CliRunner().invoke(main, ["site", "cells", str(folder), "-a", str(folder),
                                    "-o", str(tmp_path / "out"), "--allow-one-class"])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output  # the half turn: left out
    index = json.loads((tmp_path / "out" / "cells.json").read_text())
    cut = {Path(f["field"]).stem: sum(f["cut"].values()) for f in index["per_field"]}
    assert cut["plain"] > 5
    for name in ("boxes_on_stored", "boxes_on_stored_no_size", "boxes_on_upright"):
        assert cut[name] == cut["plain"], (name, cut)
    half = next(f for f in index["per_field"] if f["field"].startswith("half_turn"))
    assert cut["half_turn"] == 0 and "EXIF orientation" in half["rejected"]


@pytest.mark.parametrize("command", [
    ["sessions", "list", "--db", "{db}"],
    ["sync", "{db}", "--to", "postgresql://station@127.0.0.1:1/programme"],
    ["site", "cells", "--from-sessions", "{db}", "-o", "{out}"],
    ["sessions", "review", "1", "--out", "{out}.html", "--db", "{db}"],
])
def test_a_screening_database_that_is_a_fifo_is_named_as_such(tmp_path, watchdog, command):
    """A FIFO given as the screening database was reported as 'no screening database at ...' (it is
    there): each reader asked `is_file()` itself. One check, in the record store, names it."""
    import os

    db = tmp_path / "screening.sqlite"
    os.mkfifo(db)
    args = [a.format(db=db, out=tmp_path / "out") for a in command]
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    assert "not a regular file" in res.output and "no screening database" not in res.output, res.output


def test_sync_on_a_station_file_with_a_foreign_station_table_is_one_line(screened):
    """A screening file whose `station` table is not edgekit's (a tool's, or damaged) ended `sync` in a
    sqlite3 traceback: the station's own file was read outside the record store's error handling."""
    with sqlite3.connect(screened) as con:
        con.execute("CREATE TABLE station (x)")
    res = CliRunner().invoke(main, ["sync", str(screened), "--to", "postgresql://station@127.0.0.1:1/programme"])
    assert res.exit_code != 0 and res.exc_info is not None and res.exc_info[0] is SystemExit, res.output
    assert "Traceback" not in res.output and "station has no column" in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [
    ["screen", str(CROP), "--patient", "P9", "-m", str(GOLDEN), "--db", "{db}"],
    ["sync", "{db}", "--to", "postgresql://station@127.0.0.1:1/programme"],
])
def test_a_screening_file_that_lost_its_records_table_is_refused_unchanged(screened, command):
    """A screening file whose records table was dropped was quietly given a new, empty one by the next
    writer (`screen`, `sync`): its sessions then read 0 cells, refer, and sync would send them so."""
    with sqlite3.connect(screened) as con:
        con.execute("DROP TABLE records")
    before = screened.read_bytes()
    res = CliRunner().invoke(main, [a.format(db=screened) for a in command])
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    assert "records table is gone" in res.output
    with sqlite3.connect(screened) as con:
        assert not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'records'").fetchall()
    assert screened.read_bytes() == before
