"""`edgekit serve` on a phone over weak Wi-Fi (issue 23), API side: what became of an upload by its
content hash, phone-sized overlays, the join page for 401, the token kept across restarts, the LAN
address and QR code."""

from __future__ import annotations

import os
import stat

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'edgekit[serve]')")
from test_serve import AUTH, FIELD, TOKEN, _client, _crop_bytes, _session, _station, _upload  # noqa: E402

from edgekit.device.serve.access import choose_token, read_token, token_path  # noqa: E402
from edgekit.device.serve.join import lan_addresses, qr_text  # noqa: E402
from edgekit.errors import EdgekitError  # noqa: E402


@pytest.fixture()
def station(tmp_path):
    st = _station(tmp_path)
    yield st
    st.close()


def _state(client, sid: int, sha: str):
    return client.get(f"/api/sessions/{sid}/uploads/{sha}", headers=AUTH)


def test_the_station_says_what_became_of_an_upload_by_its_hash(station):
    import hashlib

    client = _client(station, token=TOKEN)
    sid = _session(client)
    data = FIELD.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    r = _state(client, sid, sha)
    assert r.status_code == 200 and r.json()["state"] == "not recorded" and r.json()["answer"] is None
    first = _upload(client, sid, data, "field", FIELD.name).json()
    assert first["sha256"] == sha
    got = _state(client, sid, sha).json()
    assert got["state"] == "recorded"
    answer = got["answer"]
    assert answer["result"]["cells"] == first["result"]["cells"] > 0
    assert answer["recorded"] == first["recorded"] and answer["overlay_phone"] == first["overlay_phone"]
    assert got["summary"]["crops"] == first["summary"]["crops"]  # the session as it is now
    # sent again: answered "already", and the kept answer stays the first one
    again = _upload(client, sid, data, "field", FIELD.name).json()
    assert again["field"]["verdict"] == "duplicate"
    assert _state(client, sid, sha).json()["answer"]["recorded"] == first["recorded"]
    # a crop too; another session does not have it
    crop = _crop_bytes(1)
    _upload(client, sid, crop, "crop")
    assert _state(client, sid, hashlib.sha256(crop).hexdigest()).json()["state"] == "recorded"
    other = _session(client, "P-002")
    assert _state(client, other, sha).json()["state"] == "not recorded"


def test_upload_state_from_the_records_alone_and_while_in_flight(station):
    import hashlib

    client = _client(station, token=TOKEN)
    sid = _session(client)
    data = FIELD.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    _upload(client, sid, data, "field", FIELD.name)

    def forget():  # a station stopped between recording the cells and keeping its answer
        with station.store.conn:
            station.store.conn.execute("DELETE FROM serve_uploads")

    station.submit(forget).result()
    got = _state(client, sid, sha).json()
    assert got["state"] == "recorded" and got["answer"] is None
    pending = "ab" * 32
    station.in_flight[pending] = 1  # received, waiting for the analysis
    assert _state(client, sid, pending).json()["state"] == "in progress"


def test_upload_state_refuses_bad_input_in_one_line(station):
    client = _client(station, token=TOKEN)
    sid = _session(client)
    r = _state(client, sid, "not-a-hash")
    assert r.status_code == 422 and "sha256" in r.json()["detail"]
    assert _state(client, sid, "AB" * 32).status_code == 422  # upper case is not how hashes are given
    r = _state(client, 999, "ab" * 32)
    assert r.status_code == 404 and r.json()["detail"] == "no session 999"
    assert client.get(f"/api/sessions/{sid}/uploads/{'ab' * 32}").status_code == 401


def test_overlays_come_sized_for_a_phone_with_the_full_one_a_tap_away(station):
    import cv2
    import numpy as np

    client = _client(station, token=TOKEN)
    sid = _session(client)
    big = cv2.resize(cv2.imread(str(FIELD)), (2400, 1800), interpolation=cv2.INTER_CUBIC)
    out = _upload(client, sid, cv2.imencode(".jpg", big)[1].tobytes(), "field", "big.jpg").json()
    assert out["overlay_phone"] == out["overlay"] + "?size=phone"
    full = client.get("/" + out["overlay"], headers=AUTH)
    phone = client.get("/" + out["overlay_phone"], headers=AUTH)
    assert full.status_code == phone.status_code == 200 and phone.headers["content-type"] == "image/jpeg"
    side = {k: max(cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR).shape[:2])
            for k, r in (("full", full), ("phone", phone))}
    assert side == {"full": 1600, "phone": 1024}
    assert len(phone.content) < 0.6 * len(full.content)
    r = client.get("/" + out["overlay"] + "?size=huge", headers=AUTH)
    assert r.status_code == 422 and "size" in r.json()["detail"]
    # an overlay written before phone copies existed: the full one is answered
    os.remove(station.overlay_dir / f"{out['sha256']}.phone.jpg")
    assert client.get("/" + out["overlay_phone"], headers=AUTH).content == full.content


def test_a_fields_answer_carries_what_its_overlay_draws_for_the_phone_to_draw(station):
    """The page draws the overlay on the photo it sent, from the answer's marks (no picture to
    download): the marks say what the station's overlay says; they are not kept with the answer
    (a reload shows the station's overlay file); the answer comes gzipped to a client that takes it."""
    import cv2
    import numpy as np

    from edgekit.device.field import COLORS, analyze_field
    from edgekit.device.field.overlay import banner_text, header_text

    client = _client(station, token=TOKEN)
    sid = _session(client)
    r = _upload(client, sid, FIELD.read_bytes(), "field", FIELD.name,
                headers={**AUTH, "Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    out = r.json()
    marks, res = out["marks"], out["result"]
    rgb = cv2.imread(str(FIELD))[:, :, ::-1]
    assert marks["size"] == [rgb.shape[1], rgb.shape[0]] and marks["thick"] >= 1
    assert marks["colors"] == {k or "": "#{:02x}{:02x}{:02x}".format(*v) for k, v in COLORS.items()}
    report = analyze_field(rgb, station.classifier)
    assert marks["header"] == header_text(report)
    assert marks["banner"] == banner_text(report)  # NOT VALIDATED on the phone's drawing as on the station's
    assert report.domain is not None and not report.domain["ok"]  # this fixture is off the model's domain
    assert marks["banner"].startswith("NOT VALIDATED")
    assert marks["header"].startswith(f"{res['cells']} cells, {res['parasitized']} ")
    cells = marks["cells"]
    assert [c["box"] for c in cells] == [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in
                                         (c["box"] for c in res["cell_list"])]
    assert sum(c["call"] == "parasitized" for c in cells) == res["parasitized"]
    assert sum(c["label"].endswith("?") for c in cells) == res["uncertain"]
    for c in cells:  # an outline: a polygon inside its box
        xy = np.array(c["outline"]).reshape(-1, 2)
        assert len(xy) >= 3 and (xy >= 0).all() and (xy < [c["box"][2], c["box"][3]]).all()
    # kept without its marks: the station's overlay files serve every later view
    assert "marks" not in _state(client, sid, out["sha256"]).json()["answer"]
    (kept,) = client.get(f"/api/sessions/{sid}/uploads", headers=AUTH).json()["uploads"]
    assert "marks" not in kept["answer"] and kept["answer"]["overlay"] == out["overlay"]


def test_status_says_how_the_page_shrinks_a_field_photo(station):
    from edgekit.device.field.focus import MAX_SIDE

    up = _client(station, token=TOKEN).get("/api/status", headers=AUTH).json()["upload"]
    assert up == {"field_max_side": MAX_SIDE, "jpeg_quality": 0.9} and MAX_SIDE >= 1600


def test_a_browser_without_the_token_gets_a_page_saying_how_to_join(station):
    client = _client(station, token=TOKEN)
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    r = client.get("/", headers=html)
    assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")
    assert "not joined" in r.text and "QR code" in r.text and TOKEN not in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "style-src 'sha256-" in csp and "script" not in csp
    wrong = client.get("/?token=wrong-token-0123456789", headers=html, follow_redirects=False)
    assert wrong.status_code == 401 and "old link" in wrong.text
    api = client.get("/api/status", headers=html)  # the API stays JSON, whatever the browser accepts
    assert api.status_code == 401 and "access token" in api.json()["detail"]
    assert client.get("/").json()["detail"].startswith("missing or wrong access token")


# ---------------------------------------------------------------------------- the kept token


def test_the_joined_phone_keeps_its_cookie_across_its_own_restarts(station):
    from edgekit.device.serve.app import COOKIE_SECONDS

    r = _client(station, token=TOKEN).get(f"/?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and f"Max-Age={COOKIE_SECONDS}" in r.headers["set-cookie"]
    assert COOKIE_SECONDS >= 7 * 24 * 3600


def test_the_token_is_kept_beside_the_database_for_the_owner_only(tmp_path):
    saved = token_path(tmp_path / "screening.sqlite")
    assert saved == tmp_path / "screening.sqlite.serve-token"
    old = os.umask(0o022)
    try:
        first = choose_token("0.0.0.0", {}, saved)
    finally:
        os.umask(old)
    assert len(first) >= 32 and stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert choose_token("0.0.0.0", {}, saved) == first  # a restart: phones stay joined
    rotated = choose_token("0.0.0.0", {}, saved, rotate=True)
    assert rotated != first and read_token(saved) == rotated
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    env = {"EDGEKIT_SERVE_TOKEN": "from-the-environment-123"}
    assert choose_token("0.0.0.0", env, saved) == "from-the-environment-123"  # the environment wins
    assert read_token(saved) == rotated  # and is never written down
    assert choose_token("127.0.0.1", {}, tmp_path / "other-token") is None  # loopback: no token
    assert not (tmp_path / "other-token").exists()


def test_a_token_file_others_can_read_or_that_holds_no_token_is_refused(tmp_path):
    saved = tmp_path / "db.serve-token"
    choose_token("0.0.0.0", {}, saved)
    saved.chmod(0o644)
    with pytest.raises(EdgekitError, match="may be read by other users.*--new-token"):
        choose_token("0.0.0.0", {}, saved)
    saved.write_text("short\n")
    saved.chmod(0o600)
    with pytest.raises(EdgekitError, match="does not hold a usable token"):
        choose_token("0.0.0.0", {}, saved)
    assert choose_token("0.0.0.0", {}, saved, rotate=True) != "short"  # --new-token mends it
    with pytest.raises(EdgekitError, match="EDGEKIT_SERVE_TOKEN is set and wins"):
        choose_token("0.0.0.0", {"EDGEKIT_SERVE_TOKEN": "x" * 20}, saved, rotate=True)
    with pytest.raises(EdgekitError, match="loopback has no token"):
        choose_token("127.0.0.1", {}, saved, rotate=True)


def test_serve_refuses_a_bad_token_file_in_one_line(tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import main

    db = tmp_path / "screening.sqlite"
    token_path(db).write_text("x" * 40 + "\n")
    token_path(db).chmod(0o640)
    r = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--db", str(db)],
                           env={"EDGEKIT_SERVE_TOKEN": ""})
    assert r.exit_code == 2 and "may be read by other users" in r.output and "Traceback" not in r.output


def test_join_link_names_an_address_phones_can_open_and_comes_as_a_qr_code(tmp_path, capsys):
    from edgekit.device.serve import commands

    assert lan_addresses("192.168.4.7") == ["192.168.4.7"]
    assert all(not a.startswith("127.") for a in lan_addresses("0.0.0.0"))
    pytest.importorskip("segno", reason="segno (the serve extra's QR code) is not installed")
    qr = qr_text("http://192.168.4.7:8000/?token=" + "t" * 32)
    lines = qr.splitlines()
    assert len(lines) > 15 and len(set(map(len, lines))) == 1 and set(qr) <= set("\u2588\u2580\u2584 \n")
    commands._print_join("http", "192.168.4.7", 8000, "t" * 32)
    out = capsys.readouterr().out
    assert "http://192.168.4.7:8000/?token=" + "t" * 32 in out and "\u2588" in out


def test_what_installing_needs_is_served_without_the_token_and_nothing_else(station):
    import json

    client = _client(station, token=TOKEN)
    manifest = client.get("/static/manifest.webmanifest")
    assert manifest.status_code == 200
    assert manifest.headers["content-type"].startswith("application/manifest+json")
    assert json.loads(manifest.text)["start_url"] == "/"
    sw = client.get("/sw.js")
    assert sw.status_code == 200 and "javascript" in sw.headers["content-type"] and "caches" in sw.text
    assert "/api/" not in sw.text.split("SHELL = [")[1].split("]")[0]  # the API is never kept
    icon = client.get("/static/icon-192.png", headers={"Accept-Encoding": "gzip"})
    assert icon.status_code == 200 and icon.content.startswith(b"\x89PNG")
    assert "content-encoding" not in icon.headers  # images are sent as they are
    for path in ("/", "/static/app.js", "/static/index.html", "/api/status"):
        assert client.get(path).status_code == 401, path
    assert client.post("/sw.js").status_code in (401, 405)
    csp = client.get("/", headers=AUTH).headers["content-security-policy"]
    assert "manifest-src 'self'" in csp and "worker-src 'self'" in csp
