"""A field's colour verdict (refused as grayscale or counted) comes from all of its cells, on the
`field` path and the session paths alike, and each cell's crop features are measured once.

Before session 14 the verdict came from every n-th cell (15 of them): a stained field whose sampled
cells were grey was refused, a grey field whose sampled cells were stained was counted, and the
sampled crops were measured twice (colour rule, then domain scores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgekit.device.domain as domain_mod
from edgekit.device.domain import cell_scores
from edgekit.device.field import cell_id, crop_cell
from edgekit.device.field.classify import classify_field, segment_field
from edgekit.device.runtime import default_bundle_dir, load_classifier
from edgekit.device.screening import CutField

FIELD = Path(__file__).resolve().parent / "fixtures" / "fields" / "BloodImage_00014.jpg"


@pytest.fixture(scope="module")
def clf():
    return load_classifier(default_bundle_dir(), "tflite_int8")


@pytest.fixture(scope="module")
def found(clf):
    """A stained field of ~56 cells (a BCCD field, tiled 2 x 2): the old sample saw every 3rd."""
    from edgekit.device.preprocess import read_image

    one = read_image(FIELD)
    report, rgb = segment_field(np.ascontiguousarray(np.tile(one, (2, 2, 1))), clf)
    assert report.rejected is None and rgb is not None and len(report.cells) >= 45
    return report, rgb


def _greyed(rgb: np.ndarray, cells: list, which: list[int]) -> np.ndarray:
    """The field with the cells ``which`` turned grey, the others untouched."""
    out = rgb.copy()
    grey = rgb.mean(axis=2).round().astype(np.uint8)
    for i in which:
        c = cells[i]
        box = out[c.y : c.y + c.h, c.x : c.x + c.w]
        box[c.mask] = grey[c.y : c.y + c.h, c.x : c.x + c.w][c.mask][:, None]
    return out


def _session(rgb, cells, clf, tmp_path: Path) -> list[dict]:
    """The records `screen --fields` makes of these cells of this field."""
    from edgekit.device.records import RecordStore
    from edgekit.device.screening import record_fields

    item = ("f.jpg", "0" * 64, CutField.of(rgb, cells), cells, None, 1.0)  # a first field: any focus
    with RecordStore(tmp_path / f"s{len(list(tmp_path.iterdir()))}.sqlite") as store:
        session = store.open_session("P", clf.model_sha256)
        record_fields(store, session, [item], clf, gates=None)
        return store.records(session.id)


def _verdicts(report, rgb, clf, tmp_path: Path) -> tuple[str | None, str | None]:
    """(`edgekit field`'s refusal, the session paths' refusal) of these cells of this field."""
    from copy import copy

    field = classify_field(copy(report), rgb, clf)
    rows = _session(rgb, report.cells, clf, tmp_path)
    refused = rows[0]["reason"] if len(rows) == 1 and rows[0]["status"] == "rejected" else None
    return field.rejected, refused


def test_a_field_is_judged_by_all_its_cells_not_every_nth(found, clf, tmp_path):
    """A few grey cells, placed where a sample of every n-th cell looks, do not refuse a stained
    field; most of its cells grey, it is refused; `field` and `screen --fields` agree on each."""
    report, rgb = found
    n = len(report.cells)
    sampled = list(range(0, n, max(1, n // 15)))  # the cells the old sample saw
    assert len(sampled) < n / 2
    few_grey = _greyed(rgb, report.cells, sampled)
    assert _verdicts(report, few_grey, clf, tmp_path) == (None, None)
    most_grey = _greyed(rgb, report.cells, [i for i in range(n) if i not in sampled])
    field, session = _verdicts(report, most_grey, clf, tmp_path)
    assert field is not None and field.startswith("no stain colour") and session == field


def test_each_cell_is_measured_once_and_scored_as_before(found, clf, monkeypatch):
    """`edgekit field` measured the colour sample's crops twice (colour rule, domain scores); the
    scores are those of :func:`cell_scores`, bit for bit."""
    from copy import copy

    report, rgb = found
    expected = cell_scores([crop_cell(rgb, c) for c in report.cells], clf.manifest.domain)
    calls = []
    measure = domain_mod.crop_features
    monkeypatch.setattr(domain_mod, "crop_features", lambda c: calls.append(1) or measure(c))
    done = classify_field(copy(report), rgb, clf)
    assert done.rejected is None and len(calls) == len(report.cells)
    assert done.domain_scores == expected


def test_a_session_measures_each_field_cell_once(found, clf, monkeypatch, tmp_path):
    """`screen --fields` measured the colour sample's crops for the colour rule, then every crop
    again for its domain score: once each now, the records' scores unchanged."""
    report, rgb = found
    expected = cell_scores([crop_cell(rgb, c) for c in report.cells], clf.manifest.domain)
    calls = []
    measure = domain_mod.crop_features
    monkeypatch.setattr(domain_mod, "crop_features", lambda c: calls.append(1) or measure(c))
    scores = {r["source_id"]: r["domain_score"] for r in _session(rgb, report.cells, clf, tmp_path)}
    assert len(calls) == len(report.cells)
    # a tiled field repeats crops: a repeat is skipped, not recorded twice
    assert len(scores) >= len(report.cells) // 4
    assert scores == {cell_id("f.jpg", c.id): s for c, s in zip(report.cells, expected, strict=True)
                      if cell_id("f.jpg", c.id) in scores}


def test_a_grayscale_field_is_still_refused(found, clf, tmp_path):
    report, rgb = found
    grey = np.repeat(rgb.mean(axis=2).round().astype(np.uint8)[:, :, None], 3, axis=2)
    field, session = _verdicts(report, grey, clf, tmp_path)
    assert field is not None and field.startswith("no stain colour") and session == field


def test_the_station_refuses_a_grey_field_whole_and_measures_each_cell_once(tmp_path, monkeypatch):
    """The phone station's field upload recorded a grayscale field's cells (each refused by the crop
    gate) where `screen --fields` records the field once, refused; and it measured each cell twice
    (recording, then the answer). Now it records what `screen --fields` records, measured once."""
    import cv2
    from fastapi.testclient import TestClient

    from edgekit.device.serve.app import ServeConfig, create_app
    from edgekit.device.serve.station import Station

    token = "t" * 12 + "0123456789abcdef"
    auth = {"Authorization": f"Bearer {token}"}
    st = Station(load_classifier(default_bundle_dir(), "tflite_int8"), tmp_path / "s.sqlite", tmp_path / "ov")
    client = TestClient(create_app(st, ServeConfig(token=token)), base_url="http://127.0.0.1:8000")
    calls = []
    measure = domain_mod.crop_features
    monkeypatch.setattr(domain_mod, "crop_features", lambda c: calls.append(1) or measure(c))
    rgb = cv2.cvtColor(cv2.imread(str(FIELD)), cv2.COLOR_BGR2RGB)
    grey = np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    try:
        r = client.post("/api/sessions", json={"patient": "P", "site": "s", "operator": "o"}, headers=auth)
        sid = r.json()["session"]["id"]

        def upload(img: np.ndarray, name: str) -> dict:
            data = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes()
            r = client.post(f"/api/sessions/{sid}/images", params={"kind": "field", "name": name},
                            content=data, headers={**auth, "Content-Type": "image/png"})
            assert r.status_code == 200, r.text
            return r.json()

        out = upload(grey, "grey.png")
        assert (out["result"]["rejected"] or "").startswith("no stain colour"), out["result"]
        rows = st.submit(lambda: st.store.records(sid)).result()
        assert len(rows) == 1 and rows[0]["source_id"].startswith("grey") and rows[0]["status"] == "rejected"
        assert rows[0]["reason"] == out["result"]["rejected"], rows
        calls.clear()
        out = upload(rgb, "colour.png")
        assert out["result"]["rejected"] is None and out["result"]["cells"] >= 10
        assert len(calls) == out["result"]["cells"]
    finally:
        st.close()
