"""Rough edges a new user met in session 15 (benchmarks/RESULTS.md, "Rough edges, session 15")."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from edgekit.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


def _refuse_even_heights(monkeypatch):
    """Every crop of even height refused by the gate, with its height in the reason (reasons that
    differ only in their numbers, as the colour rule's chroma does)."""
    import edgekit.device.pipeline as pipeline

    real = pipeline.check_quality

    def gate(rgb, *args, **kwargs):
        h = rgb.shape[0]
        return f"blurred (Laplacian variance {h}.0 < 1000)" if h % 2 == 0 else real(rgb, *args, **kwargs)

    monkeypatch.setattr(pipeline, "check_quality", gate)


def test_screen_says_a_fields_refused_cells_in_one_line_per_reason(tmp_path, monkeypatch):
    """One stderr line per field and reason with the count, not one per cell; a refused whole file
    keeps its own line; the records and the exit status are as before."""
    _refuse_even_heights(monkeypatch)
    bad = tmp_path / "not_a_field.jpg"
    bad.write_bytes(b"junk")
    db = tmp_path / "s.sqlite"
    fields = sorted((FIXTURES / "fields").glob("*.jpg"))
    result = CliRunner().invoke(main, ["screen", "--patient", "R1", "--fields", *map(str, fields), str(bad),
                                       "--db", str(db), "--no-progress"])
    assert result.exit_code == 1, result.output  # the unreadable file, as before
    rows = sqlite3.connect(db).execute("select source_id, status from records").fetchall()
    refused = [s for s, st in rows if st == "rejected" and "#" in s]
    assert len(refused) >= 4
    lines = result.output.splitlines()
    assert not [x for x in lines if re.match(r"rejected .*#\d+:", x)]  # no line per cell
    said = {}
    for field in fields:
        (line,) = [x for x in lines if x.startswith(f"{field}: ") and "not classified" in x]
        n, of = map(int, re.search(r": (\d+) of (\d+) cells? not classified: blurred \(e\.g\. #\d+: "
                                   r"Laplacian variance", line).groups())
        said[field.name] = n
        assert of == sum(s.startswith(f"{field.name}#") for s, _ in rows)  # every cell of the field
    assert said == {f.name: sum(s.startswith(f"{f.name}#") for s in refused) for f in fields}
    assert sum(x.startswith(f"rejected {bad}: ") for x in lines) == 1  # a refused file: its own line


def _lit_square(seed: int, size: int = 64):
    """A stained, textured square lit to its border: passes the quality gates, not a cell on black."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pixels = np.array([200, 140, 170]) + rng.integers(-25, 25, (size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def test_a_cell_the_finder_cut_is_not_told_to_pass_whole_fields(tmp_path):
    """The lit-border refusal's hint (`edgekit field`) is for a file given as a crop; a cell cut from
    a field (screen --fields, the camera, the phone page) is said to fill its box instead."""
    from edgekit.device.records import RecordStore
    from edgekit.device.runtime import load_classifier
    from edgekit.device.screening import record_crops
    from edgekit.paths import default_bundle_dir

    clf = load_classifier(default_bundle_dir(), "tflite_int8")
    reasons = {}
    with RecordStore(tmp_path / "s.sqlite") as store:
        session = store.open_session("R2", clf.model_sha256)
        for i, kind in enumerate(("file", "field", "camera-field")):
            record_crops(store, session, [(f"{kind}#1", None, _lit_square(i))], clf, source_kind=kind,
                         on_outcome=lambda out, k=kind: reasons.update({k: out.reason}))
    assert all(r.startswith("not a single cell on a black background (") for r in reasons.values()), reasons
    assert "pass whole fields to `edgekit field`" in reasons["file"]
    for kind in ("field", "camera-field"):
        assert "edgekit field" not in reasons[kind] and "fills its box" in reasons[kind]


def test_the_guards_number_is_said_with_its_meaning_wherever_its_verdict_is_printed(tmp_path):
    """`field`, `screen` and `sessions show` give the guard's median distance with what it measures and
    its limit from the manifest, not a bare ``6.74 > 3.93``; the verdict itself is unchanged."""
    from edgekit.device.domain import session_verdict
    from edgekit.manifest import load_manifest
    from edgekit.paths import default_bundle_dir

    domain = load_manifest(default_bundle_dir()).domain
    assert domain is not None
    unit = "standard deviations from the training cells in size, shape and stain colour"
    far = session_verdict([6.74] * 9, domain)
    assert not far["ok"] and far["score"] == 6.74 and far["kind"] == "unlike"
    assert f"a median 6.74 {unit} (limit {domain.session_threshold:.2f})" in far["why"]
    near = session_verdict([1.5] * 9, domain)
    assert near["ok"] and f"a median 1.50 {unit}" in near["why"]

    fields = [str(p) for p in sorted((FIXTURES / "fields").glob("*.jpg"))]
    field = CliRunner().invoke(main, ["field", *fields])
    assert field.exit_code == 0, field.output
    assert f"{unit} (limit {domain.session_threshold:.2f})" in field.output
    db = str(tmp_path / "s.sqlite")
    screen = CliRunner().invoke(main, ["screen", "--patient", "R3", "--fields", *fields, "--db", db])
    assert screen.exit_code == 0 and "domain: the cells of this session do not look" in screen.output
    assert f"{unit} (limit {domain.session_threshold:.2f})" in screen.output
    show = CliRunner().invoke(main, ["sessions", "show", "R3", "--db", db])
    assert f"up to a median {domain.session_threshold:.2f} {unit}" in show.output
    assert f"{unit} (limit {domain.session_threshold:.2f})" in show.output


def test_site_cells_cuts_the_annotated_fields_present_and_says_how_many_are_absent(tmp_path):
    """A folder holding some of the fields an annotation file boxes: the present ones are cut (cells.json
    lists them only), one line says how many are absent; none present stays an error."""
    import json

    from test_cells import _iml_objects, make_field

    images = tmp_path / "images"
    boxes = {n: make_field(images / n, seed=i) for i, n in enumerate(["PA000001.JPG", "PA000002.JPG"])}
    absent = ["PA000003.JPG", "PA000004.JPG", "PA000005.JPG"]
    listed = {**boxes, **dict.fromkeys(absent, boxes["PA000001.JPG"])}
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps([{"image_name": n, "objects": _iml_objects(b)} for n, b in listed.items()]))
    out = tmp_path / "cells"
    res = CliRunner().invoke(main, ["site", "cells", str(images), "--annotations", str(ann), "-o", str(out)])
    assert res.exit_code == 0, res.output
    said = [x for x in res.output.splitlines() if "annotated fields are not in" in x]
    assert said == [f"3 of 5 annotated fields are not in {images.resolve()} (first: PA000003.JPG): left out"]
    index = json.loads((out / "cells.json").read_text())
    assert [f["field"] for f in index["per_field"]] == sorted(boxes)
    assert index["summary"]["fields"] == 2 and index["summary"]["fields_dir"] == str(images.resolve())

    for name in boxes:  # none of the annotated fields present: refused in one line, as before
        (images / name).rename(images / f"other_{name}")
    res = CliRunner().invoke(main, ["site", "cells", str(images), "--annotations", str(ann),
                                    "-o", str(tmp_path / "none")])
    assert res.exit_code == 2 and "5 of 5 annotated images are not in" in res.output, res.output


def test_the_phone_page_gets_a_fields_refused_cells_in_the_same_lines(tmp_path, monkeypatch):
    """`serve` answers a field with the lines `screen --fields` prints for its refused cells."""
    from fastapi.testclient import TestClient

    from edgekit.device.runtime import load_classifier
    from edgekit.device.serve.app import ServeConfig, create_app
    from edgekit.device.serve.station import Station
    from edgekit.paths import default_bundle_dir

    _refuse_even_heights(monkeypatch)
    token = "t" * 12 + "0123456789abcdef"
    auth = {"Authorization": f"Bearer {token}"}
    st = Station(load_classifier(default_bundle_dir(), "tflite_int8"), tmp_path / "s.sqlite", tmp_path / "ov")
    client = TestClient(create_app(st, ServeConfig(token=token)), base_url="http://127.0.0.1:8000")
    field = sorted((FIXTURES / "fields").glob("*.jpg"))[0]
    try:
        sid = client.post("/api/sessions", json={"patient": "R4"}, headers=auth).json()["session"]["id"]
        r = client.post(f"/api/sessions/{sid}/images", params={"kind": "field", "name": field.name},
                        content=field.read_bytes(), headers={**auth, "Content-Type": "image/jpeg"})
        assert r.status_code == 200, r.text
        rows = st.submit(lambda: st.store.records(sid)).result()
    finally:
        st.close()
    refused = [row for row in rows if row["status"] == "rejected"]
    assert refused
    (line,) = r.json()["not_classified"]
    name, _, said = line.partition(": ")  # the station's name of the upload: the file's, with its hash
    assert name.startswith(field.stem) and refused[0]["source_id"].startswith(f"{name}#"), line
    assert said.startswith(f"{len(refused)} of {len(rows)} cells not classified: blurred (e.g. #"), line
