"""`edgekit serve`'s API through FastAPI's test client: the same results and records as the command
line, the access token, upload bounds, bad input, bursts and two phones on one patient."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'edgekit[serve]')")
import httpx  # noqa: E402  (after the skip: httpx comes with the serve test dependencies)
from device_helpers import CELLS, GOLDEN  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from edgekit.device.serve.access import choose_token  # noqa: E402
from edgekit.device.serve.app import COOKIE, ServeConfig, create_app  # noqa: E402
from edgekit.device.serve.join import is_loopback  # noqa: E402
from edgekit.device.serve.station import Station, display_name  # noqa: E402

FIELDS = Path(__file__).resolve().parent / "fixtures" / "fields"
FIELD = FIELDS / "BloodImage_00099.jpg"
TOKEN = "t" * 12 + "0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE = "http://127.0.0.1:8000"


def _station(tmp: Path, bundle: Path = GOLDEN) -> Station:
    from edgekit.device.runtime import load_classifier

    return Station(load_classifier(bundle), tmp / "screening.sqlite", tmp / "overlays")


@pytest.fixture()
def station(tmp_path):
    st = _station(tmp_path)
    yield st
    st.close()


def _client(station: Station, **config) -> TestClient:
    return TestClient(create_app(station, ServeConfig(**config)), base_url=BASE)


def _session(client: TestClient, patient: str = "P-001", headers=AUTH) -> int:
    r = client.post("/api/sessions", json={"patient": patient, "site": "clinic", "operator": "ana"},
                    headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["session"]["id"]


def _upload(client, sid: int, data: bytes, kind: str = "crop", name: str = "x.png", headers=AUTH):
    return client.post(f"/api/sessions/{sid}/images", params={"kind": kind, "name": name}, content=data,
                       headers={**headers, "Content-Type": "image/png"})


def _crop_bytes(seed: int) -> bytes:
    import cv2

    rng = np.random.default_rng(seed)
    img = rng.integers(60, 220, (48, 48, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


# ---------------------------------------------------------------------------- access


def test_every_page_and_call_needs_the_token(station):
    client = _client(station, token=TOKEN)
    for path in ("/", "/static/app.js", "/api/status", "/api/sessions", "/openapi.json", "/api/export.csv",
                 "/api/sessions/1/review", "/api/sessions/1/cells/1.png"):
        r = client.get(path)
        assert r.status_code == 401, path
        assert "access token" in r.json()["detail"]
        assert client.get(path, headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    r = client.post("/api/sessions", json={"patient": "P"})
    assert r.status_code == 401
    r = client.post("/api/sessions/1/images", content=_crop_bytes(0), headers={"Content-Type": "image/png"})
    assert r.status_code == 401
    assert client.get("/api/status", headers=AUTH).status_code == 200


def test_page_address_moves_the_token_into_a_cookie(station):
    client = _client(station, token=TOKEN)
    r = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert f"{COOKIE}={TOKEN}" in cookie and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    client.cookies.set(COOKIE, TOKEN)
    page = client.get("/")
    assert page.status_code == 200 and 'capture="environment"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace('href="api/', "")  # nothing loaded from elsewhere
    gz = client.get("/static/app.js", headers={"Accept-Encoding": "gzip"})
    assert gz.headers.get("content-encoding") == "gzip" and "function renderField" in gz.text


def test_loopback_without_token_refuses_other_host_names(station):
    client = _client(station)  # no token: loopback only
    assert client.get("/api/status").status_code == 200
    r = client.get("/api/status", headers={"Host": "attacker.example:8000"})
    assert r.status_code == 403 and "loopback" in r.json()["detail"]


def test_cross_site_post_is_refused(station):
    client = _client(station)
    r = client.post("/api/sessions", json={"patient": "P"}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-site" in r.json()["detail"]
    assert client.post("/api/sessions", json={"patient": "P"}, headers={"Origin": BASE}).status_code == 200


def test_token_choice():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
    assert choose_token("127.0.0.1", {}) is None
    a, b = choose_token("0.0.0.0", {}), choose_token("0.0.0.0", {})
    assert a and b and a != b and len(a) >= 24
    assert choose_token("127.0.0.1", {"EDGEKIT_SERVE_TOKEN": TOKEN}) == TOKEN
    from edgekit.errors import EdgekitError

    with pytest.raises(EdgekitError, match="too short"):
        choose_token("0.0.0.0", {"EDGEKIT_SERVE_TOKEN": "abc"})


def test_openapi_describes_the_api(station):
    spec = _client(station, token=TOKEN).get("/openapi.json", headers=AUTH).json()
    assert {"/api/status", "/api/sessions", "/api/sessions/{session_id}/images", "/api/export.csv",
            "/api/sessions/{session_id}/review", "/api/sessions/{session_id}/reviews",
            "/api/sessions/{session_id}/cells/{record_id}.png"} <= set(spec["paths"])
    verdict = spec["components"]["schemas"]["VerdictIn"]["properties"]["verdict"]
    assert set(verdict["enum"]) == {"parasitized", "not parasitized", "confirm", "overrule"}
    body = spec["paths"]["/api/sessions/{session_id}/images"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "image/*" in body
    answer = spec["paths"]["/api/sessions/{session_id}/images"]["post"]["responses"]["200"]["content"]
    assert "application/json" in answer  # gzipped or not, the answer is JSON


# ---------------------------------------------------------------------------- same results as the CLI


def test_field_upload_is_edgekit_field_and_is_recorded_once(station):
    from edgekit.device.field import analyze_field

    client = _client(station, token=TOKEN)
    sid = _session(client)
    data = FIELD.read_bytes()
    r = _upload(client, sid, data, "field", FIELD.name)
    assert r.status_code == 200, r.text
    out = r.json()
    expected = analyze_field(FIELD, station.classifier).to_dict(per_cell=True)
    got = out["result"]
    for key in ("rejected", "cells", "parasitized", "positive", "negative", "uncertain", "parasitemia",
                "ci95"):
        assert got[key] == expected[key], key
    assert [c["box"] for c in got["cell_list"]] == [c["box"] for c in expected["cell_list"]]
    assert [c["p"] for c in got["cell_list"]] == [c["p"] for c in expected["cell_list"]]
    assert got["cells"] > 5
    assert out["recorded"] == {"new": got["cells"], "already": 0, "after_stop": 0}
    assert out["summary"]["crops"] == got["cells"]
    assert out["summary"]["parasitized"] == got["parasitized"]
    img = client.get(out["overlay"] if out["overlay"].startswith("/") else "/" + out["overlay"], headers=AUTH)
    assert img.status_code == 200 and img.content[:2] == b"\xff\xd8"

    again = _upload(client, sid, data, "field", "image.jpg").json()  # the same photo, another name
    assert again["recorded"] == {"new": 0, "already": got["cells"], "after_stop": 0}
    detail = client.get(f"/api/sessions/{sid}", headers=AUTH).json()
    assert len(detail["records"]) == got["cells"]
    csv = client.get("/api/export.csv", params={"session": sid}, headers=AUTH).text.splitlines()
    assert csv[0].startswith("session_id,patient") and len(csv) == 1 + got["cells"]


def test_crop_upload_is_edgekit_classify(station):
    from edgekit.device.pipeline import classify_one

    client = _client(station, token=TOKEN)
    sid = _session(client)
    path = sorted(CELLS.iterdir())[0]
    with path.open("rb") as f:  # a multipart form, as a browser form would send it
        r = client.post(f"/api/sessions/{sid}/images", params={"kind": "crop"},
                        files={"file": (path.name, f, "image/webp")}, headers=AUTH)
    assert r.status_code == 200, r.text
    got = r.json()["result"]
    want = classify_one(path.name, path, station.classifier, None).prediction
    assert got["status"] == "classified"
    assert (got["label"], got["decision"]) == (want.label, want.decision)
    assert got["p_positive"] == pytest.approx(want.p_positive, abs=1e-6)
    again = _upload(client, sid, path.read_bytes())
    assert again.json()["recorded"]["already"] == 1 and again.json()["result"]["label"] == want.label


def test_stop_rule_stops_recording(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_ALLOW_UNSIGNED", "1")  # the edited manifest no longer matches a signature
    bundle = shutil.copytree(GOLDEN, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.setdefault("patient_rule", {})["stop_cells"] = 3
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    st = _station(tmp_path, bundle)
    try:
        client = _client(st)
        sid = _session(client, headers={})
        out = _upload(client, sid, FIELD.read_bytes(), "field", headers={}).json()
        assert out["recorded"]["new"] == 3 and out["recorded"]["after_stop"] == out["result"]["cells"] - 3
        assert out["summary"]["stop_reached"] and out["summary"]["crops"] == 3
    finally:
        st.close()


@pytest.mark.parametrize("stop", [None, 3])
def test_a_field_is_classified_once_for_its_answer_and_its_records(tmp_path, monkeypatch, stop):
    """The answer is `edgekit field`'s and the records are `edgekit screen --fields`' (all cells, or
    the stop rule's first 3 with the rest classified for the answer alone), from one model pass
    over each cell; a resend (recorded already) is classified for its answer."""
    from edgekit.device.field import analyze_field
    from edgekit.device.records import RecordStore
    from edgekit.device.screening import record_fields, segment_paths
    from edgekit.device.sessions import screened_with

    bundle = GOLDEN
    if stop:
        monkeypatch.setenv("EDGEKIT_ALLOW_UNSIGNED", "1")  # the edited manifest is no longer signed
        bundle = shutil.copytree(GOLDEN, tmp_path / "bundle")
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest.setdefault("patient_rule", {})["stop_cells"] = stop
        (bundle / "manifest.json").write_text(json.dumps(manifest))
    st = _station(tmp_path, bundle)
    clf = st.classifier
    rows = []
    predict = clf.predict
    clf.predict = lambda batch: rows.append(len(batch)) or predict(batch)  # type: ignore[method-assign]
    try:
        client = _client(st, token=TOKEN)
        sid = _session(client)
        out = _upload(client, sid, FIELD.read_bytes(), "field", FIELD.name).json()
        cells = out["result"]["cells"]
        assert sum(rows) == cells > 3
        expected = analyze_field(FIELD, clf).to_dict(per_cell=True)
        calls = [(c["p"], c["decision"]) for c in out["result"]["cell_list"]]
        assert calls == [(c["p"], c["decision"]) for c in expected["cell_list"]]
        assert {k: out["result"][k] for k in ("parasitized", "uncertain", "domain")} == \
            {k: expected[k] for k in ("parasitized", "uncertain", "domain")}
        rows.clear()
        again = _upload(client, sid, FIELD.read_bytes(), "field", FIELD.name).json()
        assert sum(rows) == cells and again["result"]["cell_list"] == out["result"]["cell_list"]
        keys = ("source_id", "status", "reason", "label", "probability", "p_positive", "decision",
                "domain_score", "content_hash")
        got = st.submit(lambda: [{k: r[k] for k in keys} for r in st.store.records(sid)]).result()
    finally:
        st.close()
    store = RecordStore(tmp_path / "cli.sqlite")  # what `edgekit screen --fields` records of the photo
    session = store.open_session("P-001", clf.model_sha256, "clinic", "ana", clf.fmt, str(clf.bundle_dir),
                                 clf.manifest.decision, screened_with(clf))
    record_fields(store, session, segment_paths([(out["name"], FIELD)]), clf, stop_cells=stop)
    want = [{k: r[k] for k in keys} for r in store.records(session.id)]
    store.close()
    assert got == want and len(got) == (stop or cells)


# ---------------------------------------------------------------------------- bad input


def test_bad_uploads_get_a_json_reason_and_record_nothing(station):
    client = _client(station, token=TOKEN, max_bytes=20 * 1024 * 1024)
    sid = _session(client)
    r = _upload(client, sid, b"%PDF-1.4 not an image at all")
    assert r.status_code == 415 and "not a usable image" in r.json()["detail"]
    r = _upload(client, sid, b"")
    assert r.status_code == 400 and "empty" in r.json()["detail"]
    big = b"\0" * (50 * 1024 * 1024)
    r = _upload(client, sid, big)
    assert r.status_code == 413 and "larger than" in r.json()["detail"]

    def chunks():  # no Content-Length: refused while it streams in
        for _ in range(50):
            yield b"\0" * (1024 * 1024)

    r = client.post(f"/api/sessions/{sid}/images", content=chunks(),
                    headers={**AUTH, "Content-Type": "image/png"})
    assert r.status_code == 413
    r = client.post(f"/api/sessions/{sid}/images", params={"kind": "movie"}, content=_crop_bytes(1),
                    headers=AUTH)
    assert r.status_code == 422 and "kind" in r.json()["detail"]
    assert _upload(client, 999, _crop_bytes(1)).status_code == 404
    r = client.post("/api/sessions", json={"patient": "  "}, headers=AUTH)
    assert r.status_code == 422 and "patient" in r.json()["detail"]
    for field in ("patient", "site", "operator"):  # a bidi override would disguise a name on screens
        r = client.post("/api/sessions", json={"patient": "P", field: "P\u202e1"}, headers=AUTH)
        assert r.status_code == 422 and "control character" in r.json()["detail"], r.text
    r = client.post(f"/api/sessions/{sid}/images", files={"other": (None, "x")}, headers=AUTH)
    assert r.status_code == 400 and "no file" in r.json()["detail"]
    assert client.get(f"/api/sessions/{sid}", headers=AUTH).json()["records"] == []
    # a field that is an image but not a usable field: recorded once, as rejected, with its reason
    import cv2

    blank = cv2.imencode(".png", np.full((300, 400, 3), 255, np.uint8))[1].tobytes()
    out = _upload(client, sid, blank, "field", "blank.png").json()
    assert out["result"]["rejected"] and out["recorded"]["new"] == 1
    assert _upload(client, sid, blank, "field").json()["recorded"]["already"] == 1
    assert out["summary"]["rejected"] == 1


def test_display_name_is_safe():
    sha = "ab" * 32
    assert display_name("../../etc/passwd", sha) == f"passwd-{sha[:8]}"
    assert display_name("IMG 0001 (2).JPG", sha) == f"IMG_0001_2-{sha[:8]}.jpg"
    assert display_name(None, sha) == f"upload-{sha[:8]}"


# ---------------------------------------------------------------------------- bursts, two phones


def _async_client(station: Station, **config) -> httpx.AsyncClient:
    app = create_app(station, ServeConfig(**config))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, headers=AUTH)


def test_burst_of_100_uploads_is_bounded_and_loses_nothing_acknowledged(station):
    crops = [_crop_bytes(i) for i in range(100)]

    async def burst():
        async with _async_client(station, token=TOKEN, max_pending=8) as client:
            r = await client.post("/api/sessions", json={"patient": "burst"})
            sid = r.json()["session"]["id"]

            async def send(data):
                return await client.post(f"/api/sessions/{sid}/images", params={"kind": "crop"}, content=data,
                                         headers={"Content-Type": "image/png"})

            first = await asyncio.gather(*(send(c) for c in crops))
            refused = [c for c, r in zip(crops, first, strict=True) if r.status_code == 429]
            retried = [await send(c) for c in refused]  # what the page does on 429
            records = (await client.get(f"/api/sessions/{sid}")).json()["records"]
            return first, retried, records

    first, retried, records = asyncio.run(burst())
    codes = [r.status_code for r in first]
    assert set(codes) <= {200, 429}, codes
    assert 1 <= codes.count(200) <= 8 and codes.count(429) >= 92
    assert "busy" in next(r for r in first if r.status_code == 429).json()["detail"]
    assert all(r.status_code == 200 for r in retried)
    assert len(records) == 100  # every acknowledged upload is recorded, once
    assert station.pending == 0


def test_two_phones_on_one_patient_share_the_session_without_double_counting(station):
    data = _crop_bytes(7)

    async def two_phones():
        async with _async_client(station, token=TOKEN) as a, _async_client(station, token=TOKEN) as b:
            sa, sb = await asyncio.gather(a.post("/api/sessions", json={"patient": "P-9", "site": "A"}),
                                          b.post("/api/sessions", json={"patient": "P-9", "site": "A"}))
            sid = sa.json()["session"]["id"]
            assert sb.json()["session"]["id"] == sid
            ra, rb = await asyncio.gather(*(c.post(f"/api/sessions/{sid}/images", params={"kind": "crop"},
                                                   content=data, headers={"Content-Type": "image/png"})
                                            for c in (a, b)))
            records = (await a.get(f"/api/sessions/{sid}")).json()["records"]
            return ra.json()["recorded"], rb.json()["recorded"], records

    ra, rb, records = asyncio.run(two_phones())
    assert sorted([ra["new"], rb["new"]]) == [0, 1] and sorted([ra["already"], rb["already"]]) == [0, 1]
    assert len(records) == 1


def test_slow_upload_is_refused_and_frees_its_slot(station):
    async def slow():
        yield _crop_bytes(3)[:100]
        await asyncio.sleep(1.0)
        yield _crop_bytes(3)[100:]

    async def run():
        async with _async_client(station, token=TOKEN, upload_seconds=0.3) as client:
            sid = (await client.post("/api/sessions", json={"patient": "slow"})).json()["session"]["id"]
            r = await client.post(f"/api/sessions/{sid}/images", params={"kind": "crop"}, content=slow(),
                                  headers={"Content-Type": "image/png"})
            return r, (await client.get(f"/api/sessions/{sid}")).json()["records"]

    r, records = asyncio.run(run())
    assert r.status_code == 408 and "longer than" in r.json()["detail"]
    assert records == [] and station.pending == 0


def test_serve_command_is_light_until_it_runs():
    import subprocess
    import sys

    code = ("import json, sys; import edgekit.device.serve.commands;"
            " print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout))
    assert not loaded & {"fastapi", "uvicorn", "starlette", "cv2", "ai_edge_litert", "onnxruntime"}


def test_a_session_without_a_stored_decision_is_listed_but_not_decided(station):
    # the station's own screen (loopback): a phone lists only the sessions it started
    client = TestClient(create_app(station, ServeConfig(token=TOKEN)), base_url=BASE,
                        client=("127.0.0.1", 50000))
    old = station.submit(station.store.open_session, "P-old", "0" * 64).result()  # as an older edgekit did
    sessions = {s["session"]["id"]: s for s in client.get("/api/sessions", headers=AUTH).json()}
    assert sessions[old.id]["summary"] is None and sessions[old.id]["session"]["decision"] is None
    sid = _session(client)
    assert sessions.get(sid) is None
    fresh = client.get(f"/api/sessions/{sid}", headers=AUTH).json()
    assert fresh["session"]["decision"] == station.classifier.manifest.decision.to_dict()
    assert fresh["summary"]["decision"] == "refer"  # no cells yet
    brief = client.get(f"/api/sessions/{sid}", params={"records": "false"}, headers=AUTH).json()
    assert "records" not in brief and brief["summary"] == fresh["summary"]


def test_a_field_cut_off_half_way_is_completed_by_sending_it_again(station):
    """A crash in the middle of a field leaves some of its cells recorded; sending the photo again
    records the rest, and none twice."""
    import cv2

    from edgekit.device.field import analyze_field, cell_id, crop_cell

    client = _client(station, token=TOKEN)
    sid = _session(client)
    rgb = cv2.imread(str(FIELD))[:, :, ::-1].copy()
    cells = analyze_field(rgb, station.classifier).cells
    session = station.submit(station._session, sid).result()
    first = [(cell_id("x.jpg", c.id), None, crop_cell(rgb, c)) for c in cells[:3]]
    assert station.submit(station._record, session, first, "field", 0).result()["new"] == 3
    out = _upload(client, sid, FIELD.read_bytes(), "field").json()
    assert out["recorded"] == {"new": len(cells) - 3, "already": 3, "after_stop": 0}
    assert len(client.get(f"/api/sessions/{sid}", headers=AUTH).json()["records"]) == len(cells)


# ---------------------------------------------------------------------------- review on the page


def _screened(client: TestClient, station: Station) -> tuple[int, list[dict]]:
    """A session with the four fixture crops and one field: its review gallery's items."""
    sid = _session(client)
    for path in sorted(CELLS.iterdir()):
        assert _upload(client, sid, path.read_bytes(), "crop", path.name).status_code == 200
    assert _upload(client, sid, FIELD.read_bytes(), "field", FIELD.name).status_code == 200
    r = client.get(f"/api/sessions/{sid}/review", headers=AUTH)
    assert r.status_code == 200, r.text
    return sid, r.json()["items"]


def test_review_gallery_shows_the_flagged_cells_with_their_kept_crops(station):
    from edgekit.device.review import flagged

    client = _client(station, token=TOKEN)
    sid, items = _screened(client, station)
    detail = client.get(f"/api/sessions/{sid}", headers=AUTH).json()
    cutoff = station.classifier.manifest.decision.cutoff
    kept = station.submit(station.store.crop_images, sid).result()
    stored = station.submit(station.store.records, sid).result()
    records = {r["source_id"]: r for r in stored if r["status"] == "classified"}
    want = {s for s, r in records.items() if flagged(r["p_positive"], r["decision"], cutoff)}
    sample = {s for s, r in records.items() if s not in want and r["id"] in kept}  # the negative sample
    flagged_items = [it for it in items if not it["negative_sample"]]
    assert want and {it["source"] for it in flagged_items} == want  # every flagged cell
    assert {it["source"] for it in items if it["negative_sample"]} == sample  # then the negatives kept
    assert items[:len(flagged_items)] == flagged_items  # flagged first
    assert [it["p"] for it in flagged_items] == sorted((it["p"] for it in flagged_items), reverse=True)
    assert all(it["review"] is None and it["image"] for it in items)
    for it in items[:3]:
        png = client.get("/" + it["image"], headers=AUTH)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content == kept[it["id"]]  # the pixels that were classified
        assert "no-cache" in png.headers["cache-control"]  # never a stale picture under a cell's number
        again = client.get("/" + it["image"], headers={**AUTH, "If-None-Match": png.headers["etag"]})
        assert again.status_code == 304 and not again.content
    every = client.get(f"/api/sessions/{sid}/review", params={"all": "true"}, headers=AUTH).json()["items"]
    assert len(every) == detail["summary"]["crops"] > len(items)
    unkept = next(it for it in every if it["image"] is None)
    r = client.get(f"/api/sessions/{sid}/cells/{unkept['id']}.png", headers=AUTH)
    assert r.status_code == 404 and "no kept crop" in r.json()["detail"]
    review = client.get(f"/api/sessions/{sid}/review", headers=AUTH).json()["review"]
    assert review["model"]["parasitized"] == detail["summary"]["parasitized"]
    assert review["flagged"] == len(flagged_items) == review["pending"] and review["reviewed"] == 0


def test_confirm_and_overrule_on_the_page_are_recorded_once(station, tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import main

    client = _client(station, token=TOKEN)
    sid, items = _screened(client, station)
    top = items[0]
    assert top["called"]  # the most suspicious cell is counted parasitized by the model
    url = f"/api/sessions/{sid}/reviews"
    before = client.get(f"/api/sessions/{sid}", headers=AUTH).json()["review"]
    r = client.post(url, json={"verdicts": [{"record_id": top["id"], "verdict": "overrule"}],
                               "reviewer": "amina"}, headers=AUTH)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["recorded"] == {"new": 1, "changed": 0, "unchanged": 0}
    assert out["reviews"][str(top["id"])]["verdict"] == "not parasitized"
    assert out["reviews"][str(top["id"])]["reviewer"] == "amina"
    after = out["review"]
    assert after["model"] == before["model"]  # the model's count stays what the model said
    assert after["confirmed"]["parasitized"] == before["confirmed"]["parasitized"] - 1
    assert (after["overruled"], after["reviewed"], after["pending"]) == (1, 1, before["pending"] - 1)
    # the same verdict again (a double tap, a retry after a lost answer): nothing new
    again = client.post(url, json={"verdicts": [{"record_id": top["id"], "verdict": "not parasitized"}],
                                   "reviewer": "amina"}, headers=AUTH).json()
    assert again["recorded"] == {"new": 0, "changed": 0, "unchanged": 1} and again["review"] == after
    reviews = station.submit(station.store.reviews, sid).result()
    assert list(reviews) == [top["id"]]
    # changing one's mind replaces the verdict; confirm resolves against the model's call
    changed = client.post(url, json={"verdicts": [{"record_id": top["id"], "verdict": "confirm"},
                                                  {"record_id": items[1]["id"], "verdict": "parasitized"}]},
                          headers=AUTH).json()
    assert changed["recorded"] == {"new": 1, "changed": 1, "unchanged": 0}
    assert changed["reviews"][str(top["id"])]["verdict"] == "parasitized"
    assert changed["review"]["overruled"] == (0 if items[1]["called"] else 1)
    gallery = client.get(f"/api/sessions/{sid}/review", headers=AUTH).json()["items"]
    assert {it["id"]: (it["review"] or {}).get("verdict") for it in gallery}[top["id"]] == "parasitized"
    # the command line reads the same verdicts and counts from the same database
    res = CliRunner().invoke(main, ["sessions", "show", "--id", str(sid), "--json", "--db",
                                    str(station.db_path)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["review"] == changed["review"]
    listed = {s["session"]["id"]: s for s in client.get("/api/sessions", headers=AUTH).json()}
    assert listed[sid]["review"]["confirmed"] == changed["review"]["confirmed"]
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(client.get("/api/export.csv", params={"session": sid},
                                                      headers=AUTH).text, newline="")))
    assert sum(bool(r["review"]) for r in rows) == 2 and "parasitized" in {r["review"] for r in rows}


def test_review_refuses_bad_input_with_a_json_reason_and_records_nothing(station):
    client = _client(station, token=TOKEN)
    sid, items = _screened(client, station)
    url = f"/api/sessions/{sid}/reviews"
    ok = {"record_id": items[0]["id"], "verdict": "parasitized"}

    def refused(body, status=422, **kw):
        r = client.post(url, headers=AUTH, **({"json": body} if body is not None else kw))
        assert r.status_code == status, r.text
        return r.json()["detail"]

    assert "no cell 99999" in refused({"verdicts": [ok, {"record_id": 99999, "verdict": "parasitized"}]})
    assert "verdict" in refused({"verdicts": [{"record_id": items[0]["id"], "verdict": "maybe"}]})
    assert "verdicts" in refused({"verdicts": []})
    assert "record_id" in refused({"verdicts": [{"record_id": 0, "verdict": "parasitized"}]})
    assert "record_id" in refused({"verdicts": [{"record_id": 2**70, "verdict": "parasitized"}]})
    assert "reviewer" in refused({"verdicts": [ok], "reviewer": "a\r\nb"})
    assert "control character" in refused({"verdicts": [ok], "reviewer": "ana\u202e"})
    refused(None, content=b"not json", **{})
    refused(None, content=b"[]")
    import cv2

    blank = cv2.imencode(".png", np.full((300, 400, 3), 255, np.uint8))[1].tobytes()
    _upload(client, sid, blank, "field", "blank.png")
    rejected = next(r for r in client.get(f"/api/sessions/{sid}", headers=AUTH).json()["records"]
                    if r["status"] == "rejected")
    rid = station.submit(station.store.records, sid).result()
    rejected_id = next(r["id"] for r in rid if r["source_id"] == rejected["source_id"])
    assert "not classified" in refused({"verdicts": [{"record_id": rejected_id, "verdict": "parasitized"}]})
    assert client.post("/api/sessions/999/reviews", json={"verdicts": [ok]}, headers=AUTH).status_code == 404
    assert client.post(f"/api/sessions/{2**70}/reviews", json={"verdicts": [ok]},
                       headers=AUTH).status_code == 422
    assert client.get("/api/sessions/999/review", headers=AUTH).status_code == 404
    assert client.get(f"/api/sessions/{sid}/cells/abc.png", headers=AUTH).status_code == 422
    other = _session(client, "P-other")  # a cell of another session is not this session's
    r = client.get(f"/api/sessions/{other}/cells/{items[0]['id']}.png", headers=AUTH)
    assert r.status_code == 404
    assert "no cell" in client.post(f"/api/sessions/{other}/reviews", json={"verdicts": [ok]},
                                    headers=AUTH).json()["detail"]
    for path in (f"/api/sessions/{sid}/review", f"/api/sessions/{sid}/cells/{items[0]['id']}.png"):
        assert client.get(path).status_code == 401
    assert client.post(url, json={"verdicts": [ok]}).status_code == 401
    assert station.submit(station.store.reviews, sid).result() == {}  # nothing was recorded


def test_csv_download_is_the_safe_export_of_the_command_line(station):
    from click.testing import CliRunner

    from edgekit.cli import main

    client = _client(station, token=TOKEN)
    sid = _session(client, patient="=HYPERLINK(\"http://x\",\"y\")")
    assert _upload(client, sid, _crop_bytes(5), "crop", "-2+3.png").status_code == 200
    session = station.submit(station._session, sid).result()
    row = {"source_id": "a\rb.png", "content_hash": "f" * 64, "status": "rejected", "reason": "@cmd"}
    assert station.submit(station.store.add_records, session, [row]).result() == 1
    r = client.get("/api/export.csv", params={"session": sid}, headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    text = r.text
    lines = text.split("\n")
    assert len(lines) == 4 and lines[-1] == ""  # header, two records: the CR did not split a row
    assert '"a\rb.png"' in text  # quoted
    assert ",'@cmd," in text and "'=HYPERLINK" in text and ",'-2_3-" in text  # formulas made inert
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert rows[0]["patient"].startswith("'=") and rows[1]["source_id"] == "a\rb.png"
    res = CliRunner().invoke(main, ["sessions", "export", "--id", str(sid), "--db", str(station.db_path)])
    assert res.exit_code == 0, res.output
    assert res.stdout == text  # one export, whether from the page or the command line
    assert client.get("/api/export.csv", params={"session": 999}, headers=AUTH).status_code == 404


def test_serve_runs_an_unsigned_bundle_only_with_allow_unsigned(tmp_path, monkeypatch):
    import socket

    from click.testing import CliRunner

    from edgekit.cli import main

    bundle = shutil.copytree(GOLDEN, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["name"] = "edited after signing"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    apps = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: apps.append(app))
    monkeypatch.delenv("EDGEKIT_ALLOW_UNSIGNED", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    args = ["serve", "--port", port, "--model", str(bundle), "--db", str(tmp_path / "s.sqlite")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "--allow-unsigned" in r.output and "Traceback" not in r.output
    assert not apps
    r = CliRunner().invoke(main, [*args, "--allow-unsigned"])
    assert r.exit_code == 0, r.output
    assert "untrusted bundle" in r.output
    status = TestClient(apps[0], base_url=BASE).get("/api/status").json()
    assert status["untrusted"] and "bundle" in status["untrusted"]
