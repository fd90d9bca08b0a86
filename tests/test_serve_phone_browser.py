"""The phone page on a weak link (issue 23), end to end: a Pixel 5 profile with Chrome DevTools'
Fast 3G preset and 4x CPU slowdown; a 12 MP photo shrunk on the phone (EXIF orientation kept) and
sent with progress, its overlay drawn on the phone (the station's one tap away); a lost answer
asked about by the photo's hash (never called "not recorded" when the station has it); a cancel; a
station restart that keeps the phone joined.

Needs Debian's chromium and Python's playwright (skipped otherwise), like tests/test_serve_browser.py.
"""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'edgekit[serve]')")
from test_serve_browser import (  # noqa: E402
    CHROMIUM_ARGS,
    CROP,
    FIELDS,
    TOKEN,
    Server,
    _browser_setup,
    _get,
    _watched_page,
)

from edgekit.benchmarks.serve_phone import CPU_SLOWDOWN, PROFILES  # noqa: E402

STATES = ("counted", "already", "not-counted", "unknown")  # what a job ends in
# every state a card goes through, with its line of text
RECORD_STATES = """() => { window.__states = [];
  new MutationObserver((ms) => ms.forEach((m) => {
    const node = m.target.nodeType === 1 ? m.target : m.target.parentElement;
    const card = node && node.closest('[data-state]');
    if (card) { const line = card.querySelector('.state');
                window.__states.push([card.getAttribute('data-state'), line ? line.textContent : '']); } }))
  .observe(document.body, { subtree: true, childList: true, attributes: true,
                            attributeFilter: ['data-state'] }); }"""


def _phone_photo(tmp: Path) -> tuple[Path, np.ndarray]:
    """A phone-camera JPEG larger than the station measures fields at (3x3 fixture fields, 1920x1440,
    sensor-like noise), stored sideways with EXIF orientation 6; and the upright picture."""
    import cv2
    from PIL import Image

    rgb = cv2.imread(str(FIELDS[0]))[:, :, ::-1]
    row = np.hstack([rgb, rgb[:, ::-1], rgb])
    upright = np.vstack([row, row[::-1], row]).astype(np.int16)
    upright = np.clip(upright + np.random.default_rng(0).normal(0, 3, upright.shape), 0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # the sensor is sideways: turn the stored picture 90 degrees clockwise to show it
    path = tmp / "IMG_20261205_101500.jpg"
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(path, quality=92, exif=exif)
    return path, upright


def _throttle(page, profile: str = "fast3g", **overrides) -> None:
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, **PROFILES[profile], **overrides})
    cdp.send("Emulation.setCPUThrottlingRate", {"rate": CPU_SLOWDOWN})


def _open_patient(page, url: str, patient: str, token: str = TOKEN) -> None:
    page.goto(f"{url}/?token={token}")
    page.wait_for_selector("#model:has-text('tflite')")
    page.fill("#patient", patient)
    page.click("button[type=submit]")
    page.wait_for_selector("#screen:not([hidden])")
    page.evaluate(RECORD_STATES)


def _final(page, n: int = 1, timeout: float = 120_000):
    """The ``n``-th newest upload card once it ends in a state."""
    sel = ", ".join(f"[data-state='{s}']" for s in STATES)
    page.wait_for_function(f"n => document.querySelectorAll(\"{sel}\").length >= n", arg=n, timeout=timeout)
    return page.locator(sel).nth(0)


def test_sha256_of_the_page_is_the_stations(tmp_path):
    chromium, sync_api, _ = _browser_setup(tmp_path)
    server = Server(tmp_path / "screening.sqlite")
    rng = np.random.default_rng(1)
    sizes = (0, 1, 55, 56, 63, 64, 65, 1000, 300_001)  # around the 64-byte blocks and their padding
    blobs = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            page, errors = _watched_page(browser, p.devices["Pixel 5"])
            page.goto(f"{server.url}/?token={TOKEN}")
            page.wait_for_selector("#model:has-text('tflite')")
            got = page.evaluate("bs => bs.map((b) => sha256Js(new Uint8Array(b)))", [list(b) for b in blobs])
            browser.close()
    finally:
        server.stop()
    assert got == [hashlib.sha256(b).hexdigest() for b in blobs] and not errors


def test_a_12mp_photo_is_shrunk_sent_with_progress_and_counted_on_fast_3g(tmp_path):
    import cv2

    from edgekit.device.field import analyze_field
    from edgekit.device.preprocess import read_image
    from edgekit.device.runtime import load_classifier

    chromium, sync_api, shots = _browser_setup(tmp_path)
    photo, upright = _phone_photo(tmp_path)
    server = Server(tmp_path / "screening.sqlite")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            page, errors = _watched_page(browser, {**p.devices["Pixel 5"], "device_scale_factor": 2})
            _open_patient(page, server.url, "P-3G")
            _throttle(page)
            overlays: list[str] = []  # the overlay pictures the page asked the station for
            page.context.on("request", lambda r: "/api/overlays/" in r.url and overlays.append(r.url))
            page.set_input_files("#camera", str(photo))
            page.wait_for_function("() => { const b = document.querySelector('.job progress'); "
                                   "return b && b.value > 0.2; }", timeout=60_000)
            page.locator(".job").first.screenshot(path=str(shots / "serve-sending.png"))
            job = page.locator(".job").first
            buttons = [job.locator(b).is_visible() for b in ("button.cancel", "button.retry")]
            card = _final(page)
            state, text = card.get_attribute("data-state"), card.inner_text()
            assert state == "counted", text
            sha = card.get_attribute("data-sha256")
            cells = int(card.locator(".cells").inner_text())
            link = card.locator("a.overlay").get_attribute("href")
            # the page draws the overlay after the card says counted: its picture is read once shown
            page.wait_for_function("() => { const i = document.querySelector('a.overlay img'); "
                                   "return i && i.complete && i.naturalWidth > 0; }", timeout=60_000)
            img = card.locator("a.overlay img").get_attribute("src")
            card.screenshot(path=str(shots / "serve-counted.png"))
            buttons += [card.locator(b).is_visible() for b in ("button.cancel", "button.retry")]
            states = page.evaluate("window.__states")
            shown_without = list(overlays)
            with page.context.expect_page() as tapped:  # a tap opens the station's full-size overlay
                card.locator("a.overlay").click()
            tapped.value.wait_for_load_state()
            browser.close()
        status, answer = _get(f"{server.url}/api/sessions/1/uploads/{sha}")
        req = urllib.request.Request(server.url + "/" + link, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            full = r.read()
    finally:
        server.stop()

    assert not errors, errors
    assert state == "counted" and status == 200 and answer["state"] == "recorded"
    assert any(s == "sending" and "%" in text for s, text in states)  # progress shown while it was sent
    # the overlay is drawn on the phone from the answer: no picture downloaded until the tap
    assert img.startswith("blob:") and shown_without == []
    assert [u.rsplit("/", 1)[1] for u in overlays] == [link.rsplit("/", 1)[1]]
    assert buttons == [True, False, False, False]  # Cancel while it is sent; neither once it is counted
    received = cv2.imdecode(np.frombuffer(full, np.uint8), cv2.IMREAD_COLOR)
    # the station got the photo upright (EXIF applied on the phone) at the size it measures fields at
    assert received.shape[:2] == (1200, 1600)  # landscape: sent sideways, it would be 1600 x 1200
    assert read_image(photo).shape[:2] == upright.shape[:2] == (1440, 1920)  # the station applies EXIF too
    # the page's shrinking counts as an area resize does (the benchmark compares real IML fields)
    resized = cv2.resize(upright, (1600, 1200), interpolation=cv2.INTER_AREA)
    want = len(analyze_field(resized, load_classifier(None)).cells)
    assert abs(cells - want) <= max(2, 0.1 * want), (cells, want)


def test_a_lost_answer_is_asked_about_before_anything_is_said(tmp_path):
    """The station records a photo but its answer never arrives (the link drops; or it comes after
    the page stopped waiting): the page asks by the photo's hash and says "counted", never "not
    recorded"; the same photo sent again says "already counted" and counts nothing twice."""
    chromium, sync_api, _ = _browser_setup(tmp_path)
    server = Server(tmp_path / "screening.sqlite")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            context = browser.new_context(**p.devices["Pixel 5"])
            context.add_init_script("window.EDGEKIT_LIMITS = { stallMs: 4000, answerMs: 4000 };")
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            _open_patient(page, server.url, "P-lost")
            # answers to uploads are held once the station has sent them (the photo reached it whole)
            cdp = context.new_cdp_session(page)
            held: list[str] = []
            cdp.on("Fetch.requestPaused", lambda ev: held.append(ev["requestId"]))
            cdp.send("Fetch.enable", {"patterns": [{"urlPattern": "*/images?*", "requestStage": "Response"}]})

            def answer_of(field: Path, lose) -> tuple[str, str]:
                page.set_input_files("#fields", [str(field)])
                while not held:
                    page.wait_for_timeout(50)
                lose(held.pop())
                card = _final(page, len(page.query_selector_all("[data-state]")))
                return card.get_attribute("data-state"), card.locator(".state").inner_text()

            def dropped(request_id: str) -> None:  # the link drops on the way back
                cdp.send("Fetch.failRequest", {"requestId": request_id, "errorReason": "ConnectionReset"})

            def too_late(request_id: str) -> None:  # the answer comes after the page stopped waiting
                _final(page, len(page.query_selector_all("[data-state]")))
                try:
                    cdp.send("Fetch.continueRequest", {"requestId": request_id})
                except Exception:
                    pass  # the page gave up on it: what it said before is what is tested

            first_state, first_text = answer_of(FIELDS[0], dropped)
            second_state, second_text = answer_of(FIELDS[1], too_late)
            cdp.send("Fetch.disable")
            page.set_input_files("#fields", [str(FIELDS[0])])  # sent again, by hand
            third_state = _final(page, 3).get_attribute("data-state")
            shown = " ".join(text for _, text in page.evaluate("window.__states"))
            browser.close()
        status, session = _get(f"{server.url}/api/sessions/1")
    finally:
        server.stop()

    assert not errors, errors
    assert (first_state, second_state, third_state) == ("counted", "counted", "already"), shown
    assert "after the link dropped" in first_text and "after the link dropped" in second_text
    assert "not recorded" not in shown and "send it again" not in shown
    assert "asking the station" in shown  # it asked before it said anything
    ids = [r["source_id"] for r in session["records"]]
    assert status == 200 and len({i.split("#")[0] for i in ids}) == 2 and len(ids) == len(set(ids))


def test_cancel_while_sending_records_nothing_and_says_so(tmp_path):
    chromium, sync_api, _ = _browser_setup(tmp_path)
    photo, _ = _phone_photo(tmp_path)
    server = Server(tmp_path / "screening.sqlite")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            page, errors = _watched_page(browser, p.devices["Pixel 5"])
            _open_patient(page, server.url, "P-cancel")
            _throttle(page, uploadThroughput=15_000)  # a very weak link: about 15 s for the photo
            page.set_input_files("#camera", str(photo))
            page.wait_for_function("() => { const b = document.querySelector('.job progress'); "
                                   "return b && b.value > 0.05; }", timeout=60_000)
            page.click(".job button.cancel")
            card = _final(page)
            state, text = card.get_attribute("data-state"), card.inner_text()
            sha = card.get_attribute("data-sha256")
            browser.close()
        upload = _get(f"{server.url}/api/sessions/1/uploads/{sha}")[1]
        session = _get(f"{server.url}/api/sessions/1")[1]
    finally:
        server.stop()
    assert not errors, errors
    assert state == "not-counted" and "cancelled" in text.lower()
    assert upload["state"] == "not recorded" and session["records"] == []


def test_a_station_restart_keeps_the_phone_joined_and_new_token_does_not(tmp_path):
    chromium, sync_api, shots = _browser_setup(tmp_path)
    db = tmp_path / "screening.sqlite"
    server = Server(db, host="0.0.0.0", token=None)
    saved = db.with_name(db.name + ".serve-token")
    token = saved.read_text().strip()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            page, errors = _watched_page(browser, p.devices["Pixel 5"])
            _open_patient(page, server.url, "P-restart", token=token)
            page.set_input_files("#fields", [str(FIELDS[0])])
            first = _final(page).get_attribute("data-state")
            log = server.stop()
            server = Server(db, host="0.0.0.0", token=None, port=server.port)  # restarted: same token
            page.set_input_files("#fields", [str(FIELDS[1])])  # the phone was not asked to join again
            second = _final(page, 2).get_attribute("data-state")
            server.stop()
            server = Server(db, "--new-token", host="0.0.0.0", token=None, port=server.port)
            page.set_input_files("#fields", [str(FIELDS[1])])
            third = _final(page, 3)
            third_state, third_text = third.get_attribute("data-state"), third.inner_text()
            resp = page.goto(server.url + "/")
            join = page.inner_text("body")
            page.screenshot(path=str(shots / "serve-join.png"))
            browser.close()
    finally:
        server.stop()
    assert (first, second) == ("counted", "counted")
    assert third_state == "not-counted" and "no longer joined" in third_text
    assert resp.status == 401 and "not joined" in join and "QR code" in join
    assert saved.read_text().strip() != token and oct(saved.stat().st_mode & 0o777) == "0o600"
    assert f":{server.port}/?token={token}" in log and "\u2588" in log  # the join link and its QR code
    # the browser logs a request the page made while the station was down (a poll) as a console error:
    # that is the restart itself; the page's own errors still count
    assert [e for e in errors if "401" not in e and "ERR_CONNECTION_REFUSED" not in e] == []


QUEUED = """() => new Promise((resolve, reject) => {
  const open = indexedDB.open('edgekit-queue', 1);
  open.onupgradeneeded = () => open.result.createObjectStore('photos', { keyPath: 'key' });
  open.onerror = () => reject(open.error);
  open.onsuccess = () => { const req = open.result.transaction('photos').objectStore('photos').count();
                           req.onsuccess = () => { open.result.close(); resolve(req.result); }; };
})"""


def test_photos_taken_while_the_link_is_down_wait_on_the_phone_and_are_recorded_once(tmp_path):
    """Two fields taken offline, a crop taken while the station is down, the station restarted: when
    the link is back each is recorded once, the phone's queue empties, a reload sends nothing again."""
    chromium, sync_api, shots = _browser_setup(tmp_path)
    db = tmp_path / "screening.sqlite"
    server = Server(db)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            context = browser.new_context(**p.devices["Pixel 5"])
            context.add_init_script("window.EDGEKIT_LIMITS = { askAgainMs: 300, queueRetryMs: 1500 };")
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            _open_patient(page, server.url, "P-offline")
            _throttle(page)
            context.set_offline(True)
            for field in FIELDS:
                page.set_input_files("#fields", [str(field)])
            page.wait_for_function("() => document.querySelectorAll(\"[data-state='queued']\").length === 2")
            context.set_offline(False)
            server.stop()  # the station goes down; a photo taken now cannot reach it either
            page.set_input_files("#crops", [str(CROP)])
            page.wait_for_function("() => document.querySelectorAll(\"[data-state='queued']\").length === 3",
                                   timeout=60_000)
            waiting = page.evaluate(QUEUED)
            page.locator("#results").screenshot(path=str(shots / "serve-queued.png"))
            server = Server(db, port=server.port)  # back, restarted on the same database
            _final(page, 3, timeout=120_000)
            page.wait_for_function("() => document.querySelectorAll(\"[data-state='queued']\").length === 0")
            states = sorted(c.get_attribute("data-state") for c in page.query_selector_all("[data-state]"))
            left = page.evaluate(QUEUED)
            page.reload()
            page.wait_for_selector("#screen:not([hidden])")
            page.wait_for_timeout(3000)  # a queue flush would have run by now
            after_reload = len(page.query_selector_all("[data-state]"))
            browser.close()
        status, session = _get(f"{server.url}/api/sessions/1")
    finally:
        server.stop()
    assert not errors, errors
    assert waiting == 3 and left == 0 and after_reload == 0
    assert states == ["counted"] * 3, states
    ids = [r["source_id"] for r in session["records"]]
    assert status == 200 and len(ids) == len(set(ids))  # nothing twice
    assert {i.split("#")[0].rsplit("-", 1)[0] for i in ids} == {f.stem for f in FIELDS} | {CROP.stem}


def test_the_page_installs_and_opens_while_the_station_is_out_of_reach(tmp_path):
    """A web app manifest and a service worker (on localhost here; https elsewhere): the page opens
    from the phone while the station is down, a photo taken then waits, and is counted once it is back."""
    chromium, sync_api, shots = _browser_setup(tmp_path)
    db = tmp_path / "screening.sqlite"
    server = Server(db)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            context = browser.new_context(**p.devices["Pixel 5"])
            context.add_init_script("window.EDGEKIT_LIMITS = { askAgainMs: 300, queueRetryMs: 1500 };")
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            _open_patient(page, server.url, "P-installed")
            manifest = page.evaluate("""async () => {
                const link = document.querySelector('link[rel=manifest]');
                const r = await fetch(link.href, { credentials: 'omit' });
                return [r.status, await r.json()]; }""")
            page.evaluate("() => navigator.serviceWorker.ready.then(() => true)")
            page.reload()
            page.wait_for_selector("#screen:not([hidden])")
            controlled = page.evaluate("() => Boolean(navigator.serviceWorker.controller)")
            server.stop()  # the station is out of reach
            page.reload()
            page.wait_for_selector("#screen:not([hidden])")
            offline_message = page.inner_text("#message")
            page.evaluate(RECORD_STATES)
            page.set_input_files("#fields", [str(FIELDS[0])])
            page.wait_for_selector("[data-state='queued']", timeout=60_000)
            page.screenshot(path=str(shots / "serve-offline.png"))
            server = Server(db, port=server.port)
            state = _final(page, 1, timeout=60_000).get_attribute("data-state")
            browser.close()
        status, session = _get(f"{server.url}/api/sessions/1")
    finally:
        server.stop()
    assert not errors, errors
    assert manifest[0] == 200 and manifest[1]["display"] == "standalone" and manifest[1]["start_url"] == "/"
    assert {i["sizes"] for i in manifest[1]["icons"]} == {"192x192", "512x512"}
    assert controlled and "does not answer" in offline_message
    assert state == "counted" and status == 200 and len(session["records"]) > 0


def test_a_sharper_retake_of_a_counted_field_is_counted_instead_with_one_tap(tmp_path):
    """The "already counted" card of a sharper take offers "Count this take instead" (issue 22's
    replace, from the phone); a retake that is not sharper offers nothing but a new field."""
    from test_retake_focus import FIELD, _blur, _jpeg, _retake

    from edgekit.device.preprocess import read_image

    chromium, sync_api, _ = _browser_setup(tmp_path)
    rgb = read_image(FIELD)
    photos = {"soft": _jpeg(_blur(rgb, 0.6), 90), "soft-again": _jpeg(_retake(_blur(rgb, 0.6), 1.0, 0), 80),
              "sharp": _jpeg(_retake(rgb, 1.0, 0), 95)}
    for name, data in photos.items():
        (tmp_path / f"{name}.jpg").write_bytes(data)
    server = Server(tmp_path / "screening.sqlite")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            page, errors = _watched_page(browser, p.devices["Pixel 5"])
            _open_patient(page, server.url, "P-RETAKE")
            shown = []
            for i, name in enumerate(photos, 1):
                page.set_input_files("#fields", [str(tmp_path / f"{name}.jpg")])
                card = _final(page, i)
                offer = card.locator("button.replace").is_visible()
                shown.append((name, card.get_attribute("data-state"), offer))
            assert shown == [("soft", "counted", False), ("soft-again", "already", False),
                             ("sharp", "already", True)], shown
            card.locator("button.replace").click()
            page.wait_for_selector(".result[data-state='counted'] p.replaced", timeout=120_000)
            newest = page.locator(".result[data-kind=field]").nth(0)
            assert "Counted in place of soft" in newest.inner_text()
            assert not newest.locator("button.replace").is_visible()
            browser.close()
        assert errors == []
    finally:
        server.stop()
    from edgekit.device.records import RecordStore

    store = RecordStore(tmp_path / "screening.sqlite")
    try:
        records = store.records(store.sessions()[0]["id"])
    finally:
        store.close()
    replaced = {r["source_id"].split("-")[0] for r in records if r["status"] == "replaced"}
    counted = {r["source_id"].split("-")[0] for r in records if r["status"] == "classified"}
    assert replaced == {"soft"} and counted == {"sharp"}


def test_a_photo_over_the_limit_is_told_the_limit_the_station_was_given(tmp_path):
    """Hostile inputs, session 15. Before: with `serve --max-upload-mb 0.1` the phone said "0.4 MB is
    larger than the 0 MB limit" (bytes / 10^6, rounded to whole MB): now "... the 0.1 MB limit",
    in the MB --max-upload-mb is given in, as the station's own 413 says."""
    chromium, sync_api, _ = _browser_setup(tmp_path)
    photo, _ = _phone_photo(tmp_path)
    server = Server(tmp_path / "screening.sqlite", "--max-upload-mb", "0.1")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            page, errors = _watched_page(browser, p.devices["Pixel 5"])
            _open_patient(page, server.url, "P-LIMIT")
            page.set_input_files("#camera", str(photo))
            card = _final(page)
            state, text = card.get_attribute("data-state"), card.inner_text()
            browser.close()
    finally:
        server.stop()
    assert state == "not-counted" and "MB is larger than the 0.1 MB limit; not sent" in text, text
    assert not errors, errors
