"""The phone page held in one hand (issue 23, item 5), end to end under Chromium: "Take photo" in
reach of the thumb at every stage on a Pixel 5 (393x727) and a 320x568 screen, nothing wider than
the screen at 320 px, a banner when the stop rule decides the patient, the field cards back after a
reload, and the station's own screen with the join link's QR code.

Needs Debian's chromium and Python's playwright (skipped otherwise), like tests/test_serve_browser.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'edgekit[serve]')")
from device_helpers import GOLDEN  # noqa: E402
from test_serve_browser import (  # noqa: E402
    CHROMIUM_ARGS,
    CROP,
    FIELDS,
    TOKEN,
    Server,
    _browser_setup,
    _watched_page,
)

CARDS = ("cs => cs.map((c) => [c.dataset.kind, c.dataset.name, c.dataset.state || c.dataset.restored, "
         "(c.querySelector('.cells') || {}).textContent, !!c.querySelector('a.overlay img')])")
# whether all of an element is on the screen
VIEWED = """() => { const r = document.querySelector('SEL').getBoundingClientRect();
  return { inside: r.top >= 0 && r.bottom <= innerHeight && r.height > 0, height: r.height }; }"""
SMALL = {"viewport": {"width": 320, "height": 568}, "screen": {"width": 320, "height": 568},
         "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
# where the capture button is, whether all of it is on the screen, and whether the page is wider than it
IN_REACH = """() => { const r = document.querySelector('#capture').getBoundingClientRect();
  return { top: r.top, bottom: r.bottom, left: r.left, right: r.right, h: innerHeight, w: innerWidth,
           inside: r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight && r.right <= innerWidth
                   && r.height > 40,
           top_element: document.elementFromPoint((r.left + r.right) / 2, (r.top + r.bottom) / 2)
                        .closest('#capture') !== null,
           scroll_width: Math.max(document.documentElement.scrollWidth, document.body.scrollWidth),
           screen_width: screen.width }; }"""


DRAWN_CANVAS_WIDTH = """() => { const card = document.createElement('article'); card.className = 'result';
  const c = document.createElement('canvas'); c.width = 1600; c.height = 1200; card.append(c);
  document.querySelector('#results').append(card); const w = c.getBoundingClientRect().width;
  card.remove(); return w; }"""


def _more_fields(tmp: Path) -> list[Path]:
    """Six distinct field photos: the two fixture fields and the halves of each."""
    import cv2

    out = []
    for path in FIELDS:
        img = cv2.imread(str(path))
        h, w = img.shape[:2]
        for name, part in (("whole", img), ("left", img[:, : w * 3 // 5]), ("right", img[:, w * 2 // 5:])):
            dest = tmp / f"{path.stem}-{name}.jpg"
            cv2.imwrite(str(dest), part)
            out.append(dest)
    return out


def _open(page, url: str, patient: str) -> None:
    page.goto(f"{url}/?token={TOKEN}")
    page.wait_for_selector("#model:has-text('tflite')")
    page.fill("#patient", patient)
    page.click("button[type=submit]")
    page.wait_for_selector("#screen:not([hidden])")


def _check_reach(page, stage: str, seen: list) -> None:
    """The capture button whole on the screen and on top, and no sideways scrolling, with the page
    scrolled to its top and to its bottom."""
    for where in ("0", "document.body.scrollHeight"):
        page.evaluate(f"window.scrollTo(0, {where})")
        got = page.evaluate(IN_REACH)
        seen.append((stage, where, got))
        assert got["inside"] and got["top_element"], (stage, where, got)
        # a mobile browser widens its layout to fit what overflows: the screen's own width is the limit
        assert got["scroll_width"] <= min(got["w"], got["screen_width"]), (stage, where, got)


@pytest.mark.parametrize("screen", ["pixel5", "small"])
def test_take_photo_stays_in_reach_nothing_overflows_and_cards_come_back(tmp_path, screen):
    chromium, sync_api, shots = _browser_setup(tmp_path)
    photos = _more_fields(tmp_path)
    server = Server(tmp_path / "screening.sqlite")
    seen: list = []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            device = {**p.devices["Pixel 5"], "device_scale_factor": 2} if screen == "pixel5" else \
                {**p.devices["Pixel 5"], **SMALL}
            page, errors = _watched_page(browser, device)
            _open(page, server.url, "P-0044-WITH-A-RATHER-LONG-PATIENT-IDENTIFIER-0123456789")
            _check_reach(page, "session opened", seen)
            # the overlay the phone draws is shown as a canvas for a moment before its picture replaces
            # it (a race): a card's canvas as wide as a photo must fit the screen as the picture does
            drawn_width = page.evaluate(DRAWN_CANVAS_WIDTH)
            assert drawn_width <= page.viewport_size["width"], drawn_width
            for n, photo in enumerate(photos, 1):
                page.set_input_files("#fields" if n % 2 else "#camera", str(photo))
                page.locator(".result[data-kind=field]").nth(n - 1).wait_for(timeout=120_000)
                if n in (1, 3, len(photos)):
                    _check_reach(page, f"{n} field cards", seen)
            page.set_input_files("#crops", [str(CROP)])
            page.wait_for_selector(".result[data-kind=crop]", timeout=60_000)
            page.click("#refresh")
            page.wait_for_selector("#sessions tbody tr")
            _check_reach(page, "cards, crop and the sessions list", seen)
            before = page.eval_on_selector_all(".result", CARDS)
            summary = page.inner_text("#summary .s-cells")
            page.reload()
            page.wait_for_selector(".result.restored")
            page.wait_for_function("n => document.querySelectorAll('.result').length >= n", arg=len(before))
            after = page.eval_on_selector_all(".result", CARDS)
            # the station's overlays load lazily: each once it comes on the screen (before the reload
            # the page drew its own, so none is in the browser's cache)
            for img in page.locator("a.overlay img").all():
                img.scroll_into_view_if_needed()
            page.wait_for_function("() => [...document.querySelectorAll('a.overlay img')]"
                                   ".every((i) => i.complete && i.naturalWidth > 0)", timeout=60_000)
            reloaded_summary = page.inner_text("#summary .s-cells")
            _check_reach(page, "after a reload", seen)
            if screen == "small":
                page.evaluate("window.scrollTo(0, 0)")
                page.screenshot(path=str(shots / "serve-small-screen.png"))
            browser.close()
    finally:
        server.stop()
    assert len(seen) == 2 * 6 and not errors, errors
    assert len(before) == len(photos) + 1 and sorted(after) == sorted(before), (before, after)
    assert [c[2] for c in after if c[0] == "field"].count("counted") >= 2
    assert all(c[4] for c in after if c[0] == "field" and c[2] == "counted")  # each counted field's overlay
    assert reloaded_summary == summary


def test_a_clear_banner_says_when_the_stop_rule_decides_the_patient(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_ALLOW_UNSIGNED", "1")  # the edited manifest no longer matches its signature
    bundle = shutil.copytree(GOLDEN, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.setdefault("patient_rule", {})["stop_cells"] = 3
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    chromium, sync_api, shots = _browser_setup(tmp_path)
    server = Server(tmp_path / "screening.sqlite", "--model", str(bundle), "--allow-unsigned")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            page, errors = _watched_page(browser, {**p.devices["Pixel 5"], **SMALL})
            _open(page, server.url, "P-STOP")
            hidden_before = page.locator("#stop-banner").is_hidden() and page.locator("#bar-stop").is_hidden()
            page.set_input_files("#camera", str(FIELDS[0]))
            page.wait_for_selector("#stop-banner:not([hidden])", timeout=120_000)
            first = page.locator(".result[data-kind=field]").first.get_attribute("data-state")
            banner = page.evaluate(VIEWED.replace("SEL", "#stop-banner"))  # brought into view
            text = page.inner_text("#stop-banner")
            page.screenshot(path=str(shots / "serve-stop-rule.png"))
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            bar = page.evaluate(VIEWED.replace("SEL", "#bar-stop"))
            title_px = page.evaluate(
                "parseFloat(getComputedStyle(document.querySelector('#stop-banner strong')).fontSize)")
            page.set_input_files("#camera", str(FIELDS[1]))
            second = page.locator("[data-state='not-counted']").first
            second.wait_for(timeout=120_000)
            why = second.locator(".state").inner_text()
            page.reload()
            page.wait_for_selector("#stop-banner:not([hidden])")
            browser.close()
    finally:
        server.stop()
    assert hidden_before and first == "counted" and not errors, errors
    assert "stop rule reached" in text and "NOT counted" in text, text
    assert banner["inside"] and banner["height"] > 60 and title_px >= 24  # in view, in large type
    assert bar["inside"]  # and on the capture bar, wherever the page is scrolled
    assert "stop rule" in why, why


def _read_qr(grey) -> str:
    """The text of the QR code in a screenshot: binarised and given a quiet zone, read by OpenCV's
    two detectors at two sizes (one detector alone misses some codes of a browser's rendering)."""
    import cv2

    _, bw = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    bw = cv2.copyMakeBorder(bw, 32, 32, 32, 32, cv2.BORDER_CONSTANT, value=255)
    for scale in (1.0, 0.5):
        img = bw if scale == 1.0 else cv2.resize(bw, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        for detector in (cv2.QRCodeDetectorAruco(), cv2.QRCodeDetector()):
            text, _, _ = detector.detectAndDecode(img)
            if text:
                return text
    return ""


def test_the_station_screen_shows_a_qr_code_that_reads_back_as_the_join_link(tmp_path):
    import cv2
    import numpy as np

    pytest.importorskip("segno", reason="segno (the serve extra's QR code) is not installed")
    chromium, sync_api, shots = _browser_setup(tmp_path)
    server = Server(tmp_path / "screening.sqlite")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            page, errors = _watched_page(browser, {"viewport": {"width": 1024, "height": 768}})
            page.goto(f"{server.url}/?token={TOKEN}")
            page.wait_for_selector("#model:has-text('tflite')")
            page.wait_for_selector("#station-link:not([hidden])")  # the station machine: it sees all
            scope = page.inner_text("#sessions-scope")
            page.click("#station-link")
            page.wait_for_selector("svg")
            links = page.locator("code.join-link").all_inner_texts()
            png = page.locator("svg").screenshot()
            page.screenshot(path=str(shots / "serve-station.png"))
            browser.close()
    finally:
        server.stop()
    decoded = _read_qr(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE))
    port = server.url.rsplit(":", 1)[1]
    assert links == [f"http://127.0.0.1:{port}/?token={TOKEN}"]
    assert decoded == links[0] and not errors, (decoded, errors)
    assert scope.startswith("Every session")
