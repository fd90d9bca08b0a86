"""`edgekit serve` for several phones and the station's own screen (issue 23, item 5): each phone
lists and opens only the sessions it started (the station machine sees all), the field cards of a
session come back after a reload, and the station page shows the join link's QR code."""

from __future__ import annotations

import sqlite3

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'edgekit[serve]')")
from fastapi.testclient import TestClient  # noqa: E402
from test_serve import AUTH, BASE, FIELD, TOKEN, _crop_bytes, _session, _station, _upload  # noqa: E402

from edgekit.device.records import SCHEMA_VERSION, RecordStore  # noqa: E402
from edgekit.device.serve.app import PHONE_COOKIE, ServeConfig, create_app  # noqa: E402

LAN = ("192.168.4.23", 41000)  # a phone on the clinic's Wi-Fi
STATION = ("127.0.0.1", 41001)  # a browser on the station machine itself


@pytest.fixture()
def station(tmp_path):
    st = _station(tmp_path)
    yield st
    st.close()


def _client(station, client=LAN, **config) -> TestClient:
    config = {"token": TOKEN, **config}
    return TestClient(create_app(station, ServeConfig(**config)), base_url=BASE, client=client)


def _patients(client) -> set[str]:
    r = client.get("/api/sessions", headers=AUTH)
    assert r.status_code == 200, r.text
    return {s["session"]["patient"] for s in r.json()}


def test_a_phone_lists_and_opens_only_the_sessions_it_started(station):
    a, b = _client(station), _client(station)
    sa = _session(a, "P-ANNA")
    sb = _session(b, "P-BOB")
    assert a.cookies.get(PHONE_COOKIE) and a.cookies.get(PHONE_COOKIE) != b.cookies.get(PHONE_COOKIE)
    assert _patients(a) == {"P-ANNA"} and _patients(b) == {"P-BOB"}
    # another phone's session by id: answered as if there were none, its patient id nowhere
    for path in (f"/api/sessions/{sa}", f"/api/sessions/{sa}/review", f"/api/sessions/{sa}/uploads",
                 f"/api/sessions/{sa}/uploads/{'0' * 64}", f"/api/sessions/{sa}/cells/1.png",
                 f"/api/export.csv?session={sa}"):
        r = b.get(path, headers=AUTH)
        assert r.status_code == 404 and "P-ANNA" not in r.text, path
    assert _upload(b, sa, _crop_bytes(1)).status_code == 404
    assert b.post(f"/api/sessions/{sa}/reviews", json={"verdicts": [{"record_id": 1, "verdict": "confirm"}]},
                  headers=AUTH).status_code == 404
    assert station.submit(station.store.records, sa).result() == []  # nothing was recorded by the stranger
    export = b.get("/api/export.csv", headers=AUTH).text
    assert "P-ANNA" not in export  # all of its own: none of the other phone's
    assert _upload(a, sa, _crop_bytes(2)).status_code == 200
    assert "P-ANNA" in a.get("/api/export.csv", headers=AUTH).text
    # the station machine itself sees every session; so does the command line (it reads the database)
    own = _client(station, client=STATION)
    assert _patients(own) == {"P-ANNA", "P-BOB"}
    assert own.get(f"/api/sessions/{sb}", headers=AUTH).json()["session"]["patient"] == "P-BOB"
    assert PHONE_COOKIE not in own.cookies
    assert own.get("/api/status", headers=AUTH).json()["operator"] is True
    assert a.get("/api/status", headers=AUTH).json()["operator"] is False
    assert {r["patient"] for r in station.submit(station.store.sessions).result()} == {"P-ANNA", "P-BOB"}


def test_two_phones_on_one_patient_both_see_it_and_a_phone_keeps_its_id_across_joins(station):
    a, b = _client(station), _client(station)
    sid = _session(a, "P-9")
    assert _session(b, "P-9") == sid  # the second phone typed the patient id: it shares the session
    assert _patients(a) == _patients(b) == {"P-9"}
    # an API client names itself with a header instead of a cookie
    api = TestClient(create_app(station, ServeConfig(token=TOKEN)), base_url=BASE, client=LAN)
    me = {**AUTH, "X-Edgekit-Phone": "script-0123456789abcdef"}
    other = _session(api, "P-SCRIPT", headers=me)
    api.cookies.clear()
    assert {s["session"]["id"] for s in api.get("/api/sessions", headers=me).json()} == {other}
    # the join link (the token in the address) keeps the phone's id; a new phone gets its own
    first = a.cookies.get(PHONE_COOKIE)
    r = a.get(f"/?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and PHONE_COOKIE not in r.headers.get("set-cookie", "")
    assert a.cookies.get(PHONE_COOKIE) == first
    fresh = _client(station).get(f"/?token={TOKEN}", follow_redirects=False)
    assert PHONE_COOKIE in fresh.headers["set-cookie"] and "HttpOnly" in fresh.headers["set-cookie"]


def test_without_a_token_the_station_serves_its_own_machine_only_and_sees_all(station):
    phone = _client(station)
    _session(phone, "P-1")
    local = _client(station, token=None, client=STATION)
    assert _patients(local) == {"P-1"} and PHONE_COOKIE not in local.cookies


def test_field_cards_come_back_after_a_reload(station):
    client = _client(station)
    sid = _session(client)
    field = _upload(client, sid, FIELD.read_bytes(), "field", FIELD.name).json()
    crop = _upload(client, sid, _crop_bytes(3), "crop", "c.png").json()
    again = _upload(client, sid, FIELD.read_bytes(), "field", FIELD.name).json()  # a retake: already counted
    assert again["field"]["verdict"] == "duplicate"
    r = client.get(f"/api/sessions/{sid}/uploads", headers=AUTH)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["session"]["id"] == sid and got["summary"]["crops"] == field["summary"]["crops"] + 1
    items = got["uploads"]
    assert [it["sha256"] for it in items] == [field["sha256"], crop["sha256"]]  # once each, oldest first
    card = items[0]["answer"]
    assert card["kind"] == "field" and card["name"] == field["name"] and card["current"] is None
    assert card["recorded"] == field["recorded"] and card["overlay_phone"] == field["overlay_phone"]
    for key in ("cells", "parasitized", "uncertain", "parasitemia", "ci95"):
        assert card["result"][key] == field["result"][key], key
    assert "cell_list" not in card["result"]  # what a card needs, not every cell's box
    assert client.get(card["overlay_phone"].join(["/", ""]), headers=AUTH).status_code == 200
    assert items[1]["answer"]["result"]["label"] == crop["result"]["label"]
    assert client.get("/api/sessions/999/uploads", headers=AUTH).status_code == 404


def test_the_station_page_shows_the_join_link_and_its_qr_code_on_this_machine_only(station):
    pytest.importorskip("segno", reason="segno (the serve extra's QR code) is not installed")
    link = f"http://192.168.4.7:8000/?token={TOKEN}"
    own = _client(station, client=STATION, join_links=(link,))
    r = own.get("/station", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<svg" in r.text and link in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp  # nothing runs on it
    assert _client(station, join_links=(link,)).get("/station", headers=AUTH).status_code == 404  # a phone
    assert _client(station, client=STATION).get("/station").status_code == 401  # still needs the token
    loopback = _client(station, token=None, client=STATION).get("/station")
    assert loopback.status_code == 200 and "--host 0.0.0.0" in loopback.text and "<svg" not in loopback.text


def test_the_qr_code_on_the_station_page_reads_back_as_the_join_link():
    segno = pytest.importorskip("segno")
    from edgekit.device.serve.join import join_links, qr_svg

    (link,) = join_links("http", ["fe80::1"], 8000, TOKEN)
    assert link == f"http://[fe80::1]:8000/?token={TOKEN}"
    svg = qr_svg(link)
    assert svg.startswith("<svg") and svg == segno.make(link, error="m", boost_error=False).svg_inline(
        scale=8, border=4, dark="#000", light="#fff", title="Join link QR code", omitsize=True)
    assert "viewBox" in svg and "width=" not in svg.split(">", 1)[0]  # scales to the screen


def test_a_version_5_database_upgrades_and_keeps_its_sessions(tmp_path):
    db = tmp_path / "old.sqlite"
    with RecordStore(db) as store:
        s = store.open_session("P-OLD", "a" * 64, site="lab")
    con = sqlite3.connect(db)  # as edgekit with schema 5 left it: no session_phones table
    con.execute("DROP TABLE session_phones")
    con.execute("PRAGMA user_version=5")
    con.commit()
    con.close()
    with RecordStore(db, read_only=True) as ro:
        assert ro.phone_sessions("x" * 32) == set()  # read as it is, nothing written
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == 5
    with RecordStore(db) as store:
        assert SCHEMA_VERSION == 6
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == 6
        assert store.session_by_id(s.id).patient == "P-OLD"
        assert store.phone_sessions("x" * 32) == set()  # an old session belongs to no phone: the station's
        store.add_session_phone(s.id, "x" * 32)
        store.add_session_phone(s.id, "x" * 32)
        assert store.phone_sessions("x" * 32) == {s.id}


@pytest.mark.parametrize(("client", "operator"), [
    (("127.0.0.1", 1), True), (("::1", 1), True), (("::ffff:127.0.0.1", 1), True),  # dual-stack loopback
    (("192.168.4.23", 1), False), (("::ffff:192.168.4.23", 1), False), (("testclient", 1), False)])
def test_who_counts_as_the_station_machine(station, client, operator):
    got = _client(station, client=client).get("/api/status", headers=AUTH).json()
    assert got["operator"] is operator
