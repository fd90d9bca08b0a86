"""Time per field on the phone page under a throttled link (issue 23).

    python -m edgekit.benchmarks.serve_phone [--fields N] [--root DIR ...] [--runs N] [--profile P]

A real ``edgekit serve`` (the code under ``--root``, default this checkout; several: run in turn,
``--runs`` rounds, so a before and an after share the machine's load) and Debian's chromium
under a Pixel 5 profile with Chrome DevTools' network preset and 4x CPU slowdown. Each field is a
12 MP "phone photo" made from a real IML field (1280x960, upscaled to 4032x3024 with sensor-like
noise, JPEG q92: about 2.5 MB, as a phone camera writes it): the
time runs from choosing the photo to its result card with its overlay shown (drawn on a canvas, or
a picture loaded). Prints one JSON line
per field and a summary (median and max seconds, counts per field); ``--out`` writes them as JSON.
Each field also lists the network requests the page made in that time (``requests``: method and
path; a service worker's own fetches marked ``sw``).
``--upload SIDE:QUALITY`` (repeatable) has the page shrink photos to that long side and JPEG quality
instead of what the station says: each is run in turn on one station, so the sizes compare side by
side (``--agreement``: the counts of each).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgekit.paths import shared_data

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-0123456789abcdef"
PHOTO_SIZE = (4032, 3024)
# Chrome DevTools' network presets (bytes/s, ms), as its throttling panel defines them
PROFILES = {
    "fast3g": {"downloadThroughput": 1.6e6 / 8 * 0.9, "uploadThroughput": 750e3 / 8 * 0.9,
               "latency": 150 * 3.75},
    "slow3g": {"downloadThroughput": 500e3 / 8 * 0.8, "uploadThroughput": 500e3 / 8 * 0.8,
               "latency": 400 * 5},
}
CPU_SLOWDOWN = 4
TIMING_JS = """start => {
  const e = performance.getEntriesByType('resource').filter(x => x.startTime >= start);
  const post = e.find(x => x.name.includes('/images?')), ov = e.find(x => x.name.includes('/overlays/'));
  return {prepare_s: post ? (post.startTime - start) / 1e3 : null, post_s: post ? post.duration / 1e3 : null,
          overlay_s: ov ? ov.duration / 1e3 : null, overlay_bytes: ov ? ov.encodedBodySize : null,
          answer_bytes: post ? post.encodedBodySize : null};
}"""


def phone_photos(n: int, dest: Path) -> list[Path]:
    """``n`` IML fields as 12 MP phone-camera JPEGs."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    src = sorted((shared_data() / "malaria_fields_iml" / "images").glob("*.JPG"))[::20][:n]
    if len(src) < n:
        raise SystemExit("needs ../shared/data/malaria_fields_iml/images")
    out = []
    for path in src:
        big = cv2.resize(cv2.imread(str(path)), PHOTO_SIZE, interpolation=cv2.INTER_CUBIC).astype(np.int16)
        big = np.clip(big + rng.normal(0, 3, big.shape).astype(np.int16), 0, 255).astype(np.uint8)
        target = dest / path.name.replace(".JPG", ".jpg")
        cv2.imwrite(str(target), big, [cv2.IMWRITE_JPEG_QUALITY, 92])
        out.append(target)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, db: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "EDGEKIT_SERVE_TOKEN": TOKEN, "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "serve", "--host", "127.0.0.1", "--port",
                             str(port), "--db", str(db)], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            req = urllib.request.Request(url + "/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(req, timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("edgekit serve did not start")


@contextlib.contextmanager
def station_page(root: Path, chromium: str) -> Iterator[tuple[Any, Path]]:
    """A station of ``root`` on a temporary database and its page open on a Pixel 5 (joined, model
    shown): yields (page, temporary folder); the station stops afterwards."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(root, Path(tmp) / "screening.sqlite")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, headless=True,
                                            args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_context(**p.devices["Pixel 5"]).new_page()
                page.goto(f"{url}/?token={TOKEN}")
                page.wait_for_selector("#model:has-text('tflite')")
                yield page, Path(tmp)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(10)


UPLOAD_JS = """([side, quality]) => {
  if (side) Object.assign(state.info.upload, { field_max_side: side, jpeg_quality: quality });
  return state.info.upload;
}"""


def upload_setting(text: str) -> tuple[int, float]:
    """``SIDE:QUALITY`` (e.g. ``1280:0.9``) as (long side in px, JPEG quality)."""
    try:
        side, quality = text.split(":")
        return int(side), float(quality)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIDE:QUALITY such as 1280:0.9, not {text!r}") from None


def run(photos: list[Path], root: Path, profile: str, chromium: str,
        upload: tuple[int, float] | None = None) -> list[dict]:
    rows = []
    with station_page(root, chromium) as (page, _):
        page.evaluate(UPLOAD_JS, list(upload or (0, 0)))
        page.fill("#patient", f"BENCH-{profile}")
        page.click("button[type=submit]")
        page.wait_for_selector("#screen:not([hidden])")
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.emulateNetworkConditions", {"offline": False, **PROFILES[profile]})
        cdp.send("Emulation.setCPUThrottlingRate", {"rate": CPU_SLOWDOWN})
        made: list[str] = []
        page.context.on("request", lambda req: req.url.startswith("http") and made.append(request_name(req)))
        for i, photo in enumerate(photos):
            start = page.evaluate("() => performance.now()")
            made.clear()
            t0 = time.perf_counter()
            page.set_input_files("#camera", str(photo))
            card = page.locator(".result[data-kind=field]").nth(0)
            page.wait_for_function(
                "n => document.querySelectorAll('.result[data-kind=field]').length >= n",
                arg=i + 1, timeout=300_000, polling=50)
            counted_s = time.perf_counter() - t0
            page.wait_for_function(
                "n => { const c = document.querySelectorAll('.result[data-kind=field]'); "
                "if (c.length < n) return false; if (c[0].querySelector('canvas')) return true; "
                "const img = c[0].querySelector('img'); "
                "return !img || (img.complete && img.naturalWidth > 0); }", arg=i + 1,
                timeout=300_000, polling=100)
            seconds = time.perf_counter() - t0
            requests = list(made)
            cells = card.locator(".cells")
            counted = cells.count() > 0
            row = {"field": photo.name, "photo_bytes": photo.stat().st_size,
                   "seconds": round(seconds, 2), "counted_s": round(counted_s, 2),
                   "cells": int(cells.inner_text()) if counted else None,
                   "parasitized": int(card.locator(".parasitized").inner_text()) if counted else None,
                   "uncertain": int(card.locator(".uncertain").inner_text()) if counted else None,
                   "requests": requests}
            # where the time went: shrink and hash, upload and analysis, the overlay
            timing = page.evaluate(TIMING_JS, start)
            row.update({k: v if v is None else round(v, 2) for k, v in timing.items()})
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def request_name(req: Any) -> str:
    """A request as ``METHOD /path`` (no query: it may hold the token), ``sw`` when a service worker
    made it."""
    from urllib.parse import urlsplit

    return f"{req.method} {urlsplit(req.url).path}" + (" sw" if req.service_worker else "")


def tree_label(root: Path) -> str:
    """The source tree a run used, without a machine path: its commit (``+changes`` when its work
    tree differs), else its folder's name."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return root.name
    return head + ("+changes" if dirty else "")


SHRINK_JS = """async ([b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const out = await shrinkField(new File([bytes], name, { type: "image/jpeg" }));
  const buf = new Uint8Array(await out.arrayBuffer());
  let bin = "";
  for (let i = 0; i < buf.length; i += 8192) bin += String.fromCharCode(...buf.subarray(i, i + 8192));
  return btoa(bin);
}"""


def agreement(photos: list[Path], root: Path, chromium: str,
              uploads: list[tuple[int, float] | None]) -> list[dict]:
    """Counts of each field as the station gives them for the original 12 MP photo, for each copy the
    page would send (shrunk in the browser; ``None``: as the station says, else (side, quality)), and
    for the native IML field it was made from; with each copy's focus score."""
    import base64

    from edgekit.device.field import analyze_field
    from edgekit.device.field.focus import focus_score
    from edgekit.device.preprocess import read_image
    from edgekit.device.runtime import load_classifier

    clf = load_classifier(None)
    rows = []
    with station_page(root, chromium) as (page, tmp):
        default = dict(page.evaluate(UPLOAD_JS, [0, 0]))
        for photo in photos:
            b64 = base64.b64encode(photo.read_bytes()).decode()
            native = shared_data() / "malaria_fields_iml" / "images" / f"{photo.stem}.JPG"
            row: dict[str, Any] = {"field": photo.name}
            paths = [("photo", photo), ("native", native)]
            for up in uploads:
                side, quality = up or (default["field_max_side"], default["jpeg_quality"])
                page.evaluate(UPLOAD_JS, [side, quality])
                shrunk = tmp / f"sent-{side}-{quality}-{photo.name}"
                shrunk.write_bytes(base64.b64decode(page.evaluate(SHRINK_JS, [b64, photo.name])))
                paths.append((upload_name(up, default), shrunk))
            for what, path in paths:
                rgb = read_image(path)
                r = analyze_field(rgb, clf).to_dict()
                row[what] = {k: r[k] for k in ("cells", "parasitized", "uncertain")}
                row[what].update(bytes=path.stat().st_size, size=list(rgb.shape[1::-1]),
                                 focus=round(focus_score(rgb), 4))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def upload_name(up: tuple[int, float] | None, default: dict) -> str:
    side, quality = up or (default["field_max_side"], default["jpeg_quality"])
    return f"sent{side}q{quality:g}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=8)
    ap.add_argument("--root", type=Path, action="append", default=None,
                    help="the edgekit checkout whose server runs (repeatable: each in turn)")
    ap.add_argument("--runs", type=int, default=1, help="rounds over the roots (and uploads)")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="fast3g")
    ap.add_argument("--chromium", default=os.environ.get("EDGEKIT_CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--agreement", action="store_true",
                    help="instead: counts of the 12 MP photo, of the copy the page sends, of the native one")
    ap.add_argument("--upload", type=upload_setting, action="append", default=None, metavar="SIDE:QUALITY",
                    help="shrink photos to this long side and JPEG quality instead of the station's "
                         "(repeatable; each in turn, side by side)")
    args = ap.parse_args(argv)
    uploads: list[tuple[int, float] | None] = args.upload or [None]
    roots = [r.resolve() for r in args.root or [ROOT]]
    with tempfile.TemporaryDirectory() as tmp:
        photos = phone_photos(args.fields, Path(tmp))
        if args.agreement:
            rows = agreement(photos, roots[0], args.chromium, uploads)
            kinds = [k for k in rows[0] if k != "field"]
            keys = ("cells", "parasitized", "uncertain", "bytes")
            totals = {w: {k: sum(r[w][k] for r in rows) for k in keys} for w in kinds}
            print(json.dumps({"totals": totals}))
            if args.out:
                args.out.write_text(json.dumps({"totals": totals, "fields": rows}, indent=1) + "\n")
            return
        runs = []
        for _ in range(args.runs):
            for root in roots:
                for up in uploads:
                    runs.append(summarize(run(photos, root, args.profile, args.chromium, up), args.profile,
                                          tree_label(root), up))
                    print(json.dumps({k: v for k, v in runs[-1].items() if k != "fields"}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(runs[0] if len(runs) == 1 else runs, indent=1) + "\n")


def summarize(rows: list[dict], profile: str, tree: str, up: tuple[int, float] | None) -> dict[str, Any]:
    """One run: its settings, median and max seconds per field, and the fields."""
    return {"profile": profile, "cpu_slowdown": CPU_SLOWDOWN, "root": tree,
            "upload": list(up) if up else "as the station says",
            "median_seconds": statistics.median(r["seconds"] for r in rows),
            "median_counted_s": statistics.median(r["counted_s"] for r in rows),
            "max_seconds": max(r["seconds"] for r in rows),
            "requests_per_field": max(len(r["requests"]) for r in rows), "fields": rows}

if __name__ == "__main__":
    main()
