"""`edgekit serve` under faults (issue 30.5): a request records all or nothing, a full overlay disk
degrades to "counted, no overlay", redirects stay on the station's origin, and `--host` answers on
its own address."""

from __future__ import annotations

import errno

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'edgekit[serve]')")
from test_serve import AUTH, FIELD, TOKEN, _client, _session, _station, _upload  # noqa: E402

from edgekit.device.records import RecordsError, RecordStore  # noqa: E402


@pytest.fixture()
def station(tmp_path):
    st = _station(tmp_path)
    yield st
    st.close()


def _count(station) -> int:
    return station.submit(lambda: station.store.conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
                          ).result()


def test_a_full_overlay_disk_still_counts_the_field(station, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("edgekit.manifest.atomic_write_bytes", full)  # imported by the station at call time
    client = _client(station, token=TOKEN)
    sid = _session(client)
    r = _upload(client, sid, FIELD.read_bytes(), "field", FIELD.name)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["recorded"]["new"] == out["result"]["cells"] > 0 == out["recorded"]["already"]
    assert _count(station) == out["recorded"]["new"]
    # the overlay is written after the answer (the page draws its own): its address and the answer
    # kept for the photo say why there is none
    why = "counted, no overlay: No space left"
    for address in (out["overlay"], out["overlay_phone"]):
        got = client.get("/" + address, headers=AUTH)
        assert got.status_code == 404 and got.json()["detail"].startswith(why)
    kept = client.get(f"/api/sessions/{sid}/uploads/{out['sha256']}", headers=AUTH).json()["answer"]
    assert kept["overlay"] is None and kept["overlay_problem"].startswith(why)
    assert kept["result"]["cells"] == out["result"]["cells"]


def test_a_field_refused_for_a_full_database_records_none_of_its_cells(station, monkeypatch):
    client = _client(station, token=TOKEN)
    sid = _session(client)
    calls = {"n": 0}
    real = RecordStore.add_records

    def second_batch_fails(self, session, rows, kept=None, field=None):
        calls["n"] += 1
        if calls["n"] > 1:  # what a full disk does half way through a field of several batches
            raise RecordsError("the screening database is full (database or disk is full)")
        return real(self, session, rows, kept, field)

    monkeypatch.setattr(RecordStore, "add_records", second_batch_fails)
    r = _upload(client, sid, FIELD.read_bytes(), "field", FIELD.name)
    # one request is one transaction: it either went through whole (one batch) or recorded nothing
    assert calls["n"] == 1 and r.status_code == 200, r.text
    n = r.json()["result"]["cells"]
    assert n > 1 and _count(station) == n  # every cell of the field in one commit


def test_a_failed_commit_leaves_nothing_of_the_request(station, monkeypatch):
    client = _client(station, token=TOKEN)
    sid = _session(client)

    def full(self, session, rows, kept=None, field=None):
        raise RecordsError("the screening database is full (database or disk is full)")

    monkeypatch.setattr(RecordStore, "add_records", full)
    r = _upload(client, sid, FIELD.read_bytes(), "field", FIELD.name)
    assert r.status_code in (500, 503) and _count(station) == 0, r.text


@pytest.mark.parametrize("path", ["//other.example/x", "/\\other.example/x", "///other.example/x"])
def test_the_token_redirect_stays_on_this_station(station, path):
    client = _client(station, token=TOKEN)
    r = client.get(f"{path}?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303
    location = r.headers["location"]
    assert location.startswith("/") and not location.startswith(("//", "/\\")), location


def test_the_station_answers_on_the_loopback_address_it_was_given(station):
    client = _client(station, host="127.0.0.2")
    assert client.get("/api/status", headers={"Host": "127.0.0.2:8000"}).status_code == 200
    assert client.get("/api/status", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    r = client.get("/api/status", headers={"Host": "attacker.example:8000"})
    assert r.status_code == 403


def test_serve_passes_its_host_to_the_app(monkeypatch, tmp_path):
    """`edgekit serve --host 127.0.0.2` builds the app with that host (uvicorn itself not started)."""
    import uvicorn
    from click.testing import CliRunner
    from device_helpers import GOLDEN

    from edgekit.cli import main
    from edgekit.device.serve import app as app_mod

    seen = {}
    real = app_mod.create_app

    def spy(station, config):
        seen["host"] = config.host
        return real(station, config)

    monkeypatch.setattr(app_mod, "create_app", spy)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    monkeypatch.setattr("edgekit.device.serve.access.check_port_free", lambda h, p: None)
    res = CliRunner().invoke(main, ["serve", "--host", "127.0.0.2", "-m", str(GOLDEN),
                                    "--db", str(tmp_path / "s.sqlite")])
    assert res.exit_code == 0, res.output
    assert seen["host"] == "127.0.0.2" and AUTH


def test_a_json_body_is_refused_past_its_limit_without_being_held(station, monkeypatch):
    """A 200 MB body sent to a JSON endpoint was read whole (hundreds of MB of memory) before "JSON
    decode error"; it is now refused with 413 by its Content-Length, or as it streams in."""
    from edgekit.device.serve import app as serve_app

    monkeypatch.setattr(serve_app, "MAX_JSON_BYTES", 4096)
    client = _client(station, token=TOKEN)
    sid = _session(client)
    big = b'{"patient": "' + b"a" * 8192 + b'"}'
    r = client.post("/api/sessions", content=big, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than 4 kB" in r.json()["detail"]

    def chunks():  # no Content-Length: refused as it streams in
        for _ in range(100):
            yield b" " * 1024

    r = client.post(f"/api/sessions/{sid}/reviews", content=chunks(),
                    headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than 4 kB" in r.json()["detail"]
    assert client.post("/api/sessions", json={"patient": "P-2"}, headers=AUTH).status_code == 200
    assert _upload(client, sid, FIELD.read_bytes()).status_code == 200  # images keep their own, larger limit


def test_an_overlay_dir_that_is_a_file_is_refused_at_start(monkeypatch, tmp_path):
    """It started, then answered every field with "counted, no overlay"."""
    import uvicorn
    from click.testing import CliRunner
    from device_helpers import GOLDEN

    from edgekit.cli import main

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("started"))
    monkeypatch.setattr("edgekit.device.serve.access.check_port_free", lambda h, p: None)
    taken = tmp_path / "overlays"
    taken.write_text("a file")
    res = CliRunner().invoke(main, ["serve", "-m", str(GOLDEN), "--db", str(tmp_path / "s.sqlite"),
                                    "--overlay-dir", str(taken)])
    assert res.exit_code == 2 and f"cannot keep overlays in {taken}" in res.stderr, res.output


def test_a_crop_upload_has_the_crop_paths_size_bound(station):
    """A 6000x6000 PNG of a few kB uploaded as a crop was decoded in full (36 MP, seconds of CPU) before
    "blank"; `edgekit screen` refuses it from its header (16 MP), and so does the station now."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * (1 + 6000 * 3) * 6000, 9)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 6000, 6000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    client = _client(station, token=TOKEN)
    sid = _session(client)
    r = _upload(client, sid, png, kind="crop")
    assert r.status_code == 415 and "too large (6000x6000" in r.json()["detail"], r.text
    assert _count(station) == 0
