"""`edgekit serve` end to end: a real server process, a phone-emulated headless Chromium driving the
page, results read off the page compared with `edgekit field` / `edgekit classify` on the same
files, and a server killed in the middle of an upload.

The browser test needs Debian's chromium (/usr/bin/chromium, or $EDGEKIT_CHROMIUM) and Python's
playwright (no browser download); without them it is skipped with the reason. Set
$EDGEKIT_SCREENSHOTS to a folder to keep the screenshots (docs/serve-*.png were made that way).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'edgekit[serve]')")

ROOT = Path(__file__).resolve().parents[1]
FIELDS = sorted((ROOT / "tests" / "fixtures" / "fields").glob("*.jpg"))
CROP = sorted((ROOT / "examples" / "cells" / "Parasitized").iterdir())[0]
TOKEN = "e2e-token-0123456789abcdef"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unverified():
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the test's own self-signed certificate
    return ctx


def _get(url: str, token: str | None = TOKEN) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        ctx = _unverified() if url.startswith("https:") else None
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _post(url: str, data: bytes, content_type: str) -> dict:
    req = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {TOKEN}",
                                                          "Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


class Server:
    """``python -m edgekit serve`` in a subprocess on loopback, with a token."""

    def __init__(self, db: Path, *args: str, scheme: str = "http", host: str = "127.0.0.1",
                 token: str | None = TOKEN, port: int | None = None) -> None:
        """``token`` None: the station's own (kept beside the database)."""
        self.port = port or _free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        env = {**os.environ, "EDGEKIT_SERVE_TOKEN": token or "", "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgekit", "serve", "--host", host, "--port", str(self.port),
             "--db", str(db), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"edgekit serve exited: {self.proc.stdout.read()}")
            try:
                if _get(f"{self.url}/api/status")[0] in (200, 401):  # listening (401: its own token)
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise AssertionError("edgekit serve did not answer within 90 s")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stdout.read()


def _cli_jsonl(*args: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "edgekit", *args, "--format", "jsonl"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def _chromium() -> str:
    path = os.environ.get("EDGEKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return path


def _browser_setup(tmp_path: Path):
    """Debian's chromium, Playwright's sync API (both skip the test when absent) and the screenshot
    folder ($EDGEKIT_SCREENSHOTS, e.g. docs/, or the test's own)."""
    chromium = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="Python playwright is not installed")
    shots = Path(os.environ.get("EDGEKIT_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    return chromium, sync_api, shots


def _watched_page(browser, device: dict):
    """A new page on ``device`` and the list its JavaScript errors and console errors go to."""
    page = browser.new_context(**device).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return page, errors


def _pct(text: str) -> float:
    return float(text.strip().rstrip("%"))


def test_phone_screens_a_patient_like_the_command_line(tmp_path):
    chromium, sync_api, shots = _browser_setup(tmp_path)
    server = Server(tmp_path / "screening.sqlite")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            phone = {**p.devices["Pixel 5"], "device_scale_factor": 2}
            # without the token: refused, page and API alike (the page says how to join)
            stranger = browser.new_context(**phone).new_page()
            resp = stranger.goto(server.url + "/")
            assert resp.status == 401 and "not joined" in stranger.inner_text("h1")
            resp = stranger.goto(server.url + "/api/status")
            assert resp.status == 401 and "access token" in resp.json()["detail"]

            page, errors = _watched_page(browser, phone)
            page.goto(f"{server.url}/?token={TOKEN}")
            assert page.url == server.url + "/"  # the token left the address bar for a cookie
            page.wait_for_selector("#model:has-text('tflite')")
            page.fill("#patient", "P-0042")
            page.fill("#site", "Clinic 3")
            page.fill("#operator", "A. Field")
            page.screenshot(path=str(shots / "serve-start.png"))
            page.click("button[type=submit]")
            page.wait_for_selector("#screen:not([hidden])")
            page.set_input_files("#fields", [str(f) for f in FIELDS])
            page.locator(".result[data-kind=field]").nth(1).wait_for(timeout=120_000)
            page.set_input_files("#crops", [str(CROP)])
            page.wait_for_selector(".result[data-kind=crop]", timeout=60_000)
            page.locator("#summary").screenshot(path=str(shots / "serve-summary.png"))
            page.locator(".result[data-kind=field]").last.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "serve-field.png"))

            cards = {}
            for card in page.query_selector_all(".result[data-kind=field]"):
                def text(sel, card=card):
                    return card.query_selector(sel).inner_text()

                cards[card.get_attribute("data-name")] = {
                    "cells": int(text(".cells")), "parasitized": int(text(".parasitized")),
                    "uncertain": int(text(".uncertain")), "parasitemia": _pct(text(".parasitemia")),
                    "domain": card.query_selector(".domain") and card.query_selector(".domain").get_attribute(
                        "data-ok"),
                    "overlay": card.query_selector("img") is not None,
                }
            crop_card = page.query_selector(".result[data-kind=crop]")
            crop = {"label": crop_card.query_selector(".label").inner_text(),
                    "probability": float(crop_card.query_selector(".probability").inner_text())}
            summary_cells = int(page.inner_text("#summary .s-cells"))
            decision = page.get_attribute("#summary .decision", "data-decision")

            clean_run = list(errors)
            # bad input on the page: one clear message, nothing recorded
            page.set_input_files("#crops", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                   "buffer": b"not an image"}])
            page.wait_for_selector("[data-state='not-counted'][data-file='notes.txt']")
            message = page.inner_text("[data-file='notes.txt'] .state")
            page.click("#refresh")
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            page.wait_for_selector("#sessions tbody tr")
            page.screenshot(path=str(shots / "serve-sessions.png"))
            browser.close()
    finally:
        log = server.stop()

    assert not clean_run, clean_run
    assert all("415" in e for e in errors[len(clean_run):]), errors
    assert message.startswith("Not counted: notes.txt: not a usable image"), message
    fields = {Path(r["field"]).stem: r for r in _cli_jsonl("field", *map(str, FIELDS)) if "field" in r}
    assert len(cards) == 2
    for name, got in cards.items():
        want = fields[name.rsplit("-", 1)[0]]
        assert (got["cells"], got["parasitized"], got["uncertain"]) == (
            want["cells"], want["parasitized"], want["uncertain"]), name
        assert got["parasitemia"] == pytest.approx(100 * want["parasitemia"], abs=0.051)
        assert got["overlay"]
        if want.get("domain") is not None:  # the domain guard's verdict, where the field command gives one
            assert got["domain"] == str(bool(want["domain"]["ok"])).lower()
    (cls,) = _cli_jsonl("classify", str(CROP))
    assert crop["label"] == cls["label"]
    assert crop["probability"] == pytest.approx(cls["probability"], abs=5e-4)
    assert summary_cells == sum(r["cells"] for r in fields.values()) + 1
    assert decision in ("positive", "negative", "refer")
    assert log.count(TOKEN) == 1  # printed once at start, in the address; never logged with requests
    for shot in ("serve-start.png", "serve-summary.png", "serve-field.png", "serve-sessions.png"):
        assert (shots / shot).stat().st_size > 10_000


def test_phone_reviews_flagged_cells_and_the_summary_counts_the_verdict(tmp_path):
    """The review gallery on a phone: the flagged cells of a field, a verdict recorded once (a second
    tap changes nothing), the confirmed count beside the model's; the guard's verdict on every count."""
    chromium, sync_api, shots = _browser_setup(tmp_path)
    server = Server(tmp_path / "screening.sqlite")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            page, errors = _watched_page(browser, {**p.devices["Pixel 5"], "device_scale_factor": 2})
            page.goto(f"{server.url}/?token={TOKEN}")
            page.wait_for_selector("#model:has-text('tflite')")
            page.fill("#patient", "P-0043")
            page.click("button[type=submit]")
            page.wait_for_selector("#screen:not([hidden])")
            page.set_input_files("#fields", [str(FIELDS[1])])
            page.wait_for_selector(".result[data-kind=field]", timeout=120_000)
            page.set_input_files("#crops", [str(CROP)])  # an NIH parasitized cell: flagged
            page.wait_for_selector(".result[data-kind=crop]", timeout=60_000)
            field_domain = page.get_attribute(".result[data-kind=field] .domain", "data-ok")
            summary_warned = page.query_selector("#summary .warn.domain") is not None
            marked = page.inner_text("#summary .s-parasitized")
            model_count = int(marked.split()[0])
            page.click("#open-review")
            page.wait_for_selector("#review:not([hidden]) .cell")
            n_cells = len(page.query_selector_all("#gallery .cell"))
            first = page.locator("#gallery .cell").first
            rid = int(first.get_attribute("data-id"))
            called = "called" in (first.get_attribute("class") or "")
            first.locator("button[data-verdict='not parasitized']").click()
            page.wait_for_selector(f"#gallery .cell[data-id='{rid}'][data-verdict='not parasitized']")
            counts = page.inner_text("#review-counts")
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(shots / "serve-review.png"), full_page=True)
            page.locator(f"#gallery .cell[data-id='{rid}'] button[data-verdict='not parasitized']").click()
            page.wait_for_selector("#message.ok:has-text('already recorded')")
            page.click("#close-review")
            page.wait_for_selector("#screen:not([hidden])")
            confirmed = int(page.inner_text("#summary .s-confirmed").split()[0])
            reviewed = page.inner_text("#summary .s-reviewed")
            browser.close()
        status, gallery = _get(f"{server.url}/api/sessions/1/review")
    finally:
        server.stop()

    assert not errors, errors
    assert status == 200 and n_cells == len(gallery["items"]) > 0
    if field_domain == "false":  # the guard does not vouch: every count on the page says so
        assert summary_warned and "NOT VALIDATED" in marked
    verdicts = {it["id"]: it["review"] for it in gallery["items"] if it["review"]}
    assert list(verdicts) == [rid] and verdicts[rid]["verdict"] == "not parasitized"  # once
    assert gallery["review"]["model"]["parasitized"] == model_count
    assert confirmed == model_count - called == gallery["review"]["confirmed"]["parasitized"]
    n_flagged = sum(not it["negative_sample"] for it in gallery["items"])  # the rest: kept negatives
    assert reviewed.startswith(f"1 of {n_flagged} flagged") and "pending" in counts
    assert (shots / "serve-review.png").stat().st_size > 10_000


def test_server_killed_mid_upload_keeps_what_it_acknowledged(tmp_path):
    db = tmp_path / "screening.sqlite"
    server = Server(db)
    try:
        opened = _post(f"{server.url}/api/sessions", b'{"patient": "P-kill"}', "application/json")
        sid = opened["session"]["id"]
        crop_url = f"{server.url}/api/sessions/{sid}/images?kind=crop"
        assert _post(crop_url, CROP.read_bytes(), "image/webp")["recorded"]["new"] == 1  # acknowledged
        data = FIELDS[0].read_bytes()
        head = (f"POST /api/sessions/{sid}/images?kind=field HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {TOKEN}\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode()
        # a phone that drops off the network half way through an upload
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(head + data[: len(data) // 2])
        time.sleep(0.5)
        status, detail = _get(f"{server.url}/api/sessions/{sid}")
        assert status == 200 and len(detail["records"]) == 1
        # an upload cut off half way by the server's death
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(head + data[: len(data) // 2])
            time.sleep(0.5)
            server.proc.kill()
            server.proc.wait(10)
    finally:
        server.stop()

    server = Server(db)  # restarted on the same database
    try:
        status, detail = _get(f"{server.url}/api/sessions/{sid}")
        assert status == 200
        assert [r["source_kind"] for r in detail["records"]] == ["file"]  # the crop, and nothing of the field
        crop_url = f"{server.url}/api/sessions/{sid}/images?kind=crop"
        again = _post(crop_url, CROP.read_bytes(), "image/webp")
        assert again["recorded"] == {"new": 0, "already": 1, "after_stop": 0}
        assert _get(f"{server.url}/api/status", token=None)[0] == 401
    finally:
        server.stop()


def test_https_with_a_given_certificate(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed (needed to make a test certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    server = Server(tmp_path / "screening.sqlite", "--cert", str(cert), "--key", str(key), scheme="https")
    try:
        assert _get(f"{server.url}/api/status")[0] == 200
        assert _get(f"{server.url}/api/status", token=None)[0] == 401
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=_unverified()),
                                             _NoRedirect())
        with pytest.raises(urllib.error.HTTPError) as redirect:
            opener.open(f"{server.url}/?token={TOKEN}", timeout=10)
        assert redirect.value.code == 303
        cookie = redirect.value.headers["set-cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie
    finally:
        log = server.stop()
    assert "https://127.0.0.1" in log


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_serve_refuses_bad_options_in_one_line(tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import main

    pem = tmp_path / "cert.pem"
    pem.write_text("not a certificate")
    runner = CliRunner()
    r = runner.invoke(main, ["serve", "--cert", str(pem)])
    assert r.exit_code == 2 and "needs both --cert and --key" in r.output
    r = runner.invoke(main, ["serve", "--cert", str(pem), "--key", str(pem)])
    assert r.exit_code == 2 and "cannot use --cert" in r.output and "Traceback" not in r.output
    with socket.socket() as s:  # a port already taken
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = runner.invoke(main, ["serve", "--port", str(s.getsockname()[1]), "--db", str(tmp_path / "db")])
    assert r.exit_code == 2 and "cannot listen on 127.0.0.1" in r.output
    r = runner.invoke(main, ["serve", "--host", "0.0.0.0"], env={"EDGEKIT_SERVE_TOKEN": "short"})
    assert r.exit_code == 2 and "too short" in r.output
