# pyright: basic
"""Parasitemia a person can check: per-field counts with intervals, the cells to review, a review
gallery (PNG contact sheet or self-contained HTML page) and the count after a reviewer's verdicts.

A cell is *flagged for review* when the model counted it as parasitized (p >= the manifest's
cutoff) or put it in the uncertain band. Screening keeps each flagged cell's crop in the database
(``crop_images``), and those of a sample of the cells it called negative (one in
``NEGATIVE_SAMPLE_EVERY``), so the gallery shows exactly the pixels that were classified, even when
the field images are gone, and reviewers' verdicts label both sides. A reviewer confirms or
overrules cells (``reviews``); the *confirmed count* takes the reviewer's verdict where there is one
and the model's call elsewhere.

Light: numpy at import; OpenCV inside functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.metrics import wilson_interval

if TYPE_CHECKING:
    from pathlib import Path

    from edgekit.device.records import RecordStore, Session

TILE = 96


def flagged(p_positive: float | None, decision: str | None, cutoff: float | None) -> bool:
    """Called parasitized at the cutoff, or uncertain: a microscopist should look at it. Without a
    known cutoff (sessions from before the decision was stored) the record's own decision counts."""
    if cutoff is None:
        return decision in ("positive", "uncertain")
    return (p_positive is not None and p_positive >= cutoff) or decision == "uncertain"


# One cell in this many of those the model called negative keeps its crop too, so reviewers can
# confirm negatives and their verdicts are labels from both sides (``edgekit cells --from-sessions``).
# Chosen by the crop's content hash: the same cell is sampled on every run, no random state.
NEGATIVE_SAMPLE_EVERY = 20


def sampled_negative(content_hash: str | None) -> bool:
    """Whether a cell is in the review sample of negatives (by its content hash)."""
    try:
        return bool(content_hash) and int(str(content_hash)[:8], 16) % NEGATIVE_SAMPLE_EVERY == 0
    except ValueError:
        return False


def kept_for_review(p_positive: float | None, decision: str | None, cutoff: float | None,
                    content_hash: str | None) -> bool:
    """Flagged (:func:`flagged`), or in the review sample of negatives: its crop is kept."""
    return flagged(p_positive, decision, cutoff) or sampled_negative(content_hash)


def encode_png(rgb: np.ndarray) -> bytes:
    """An RGB uint8 image as PNG bytes (decoding gives back exactly these pixels).

    zlib level 1 with run-length matching, as OpenCV's default, but each row predicted from the row
    above ("up" filter) instead of the pixel to its left: on NIH crops ~10% less CPU and ~6% smaller
    (benchmarks/RESULTS.md, speed round 6); the channel swap by ``cvtColor``, not a strided copy."""
    import cv2

    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
              cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError("could not encode a crop as PNG")
    return buf.tobytes()


def review_crops(outs: Sequence[Any], images: Sequence[Any], cutoff: float | None,
                 n_workers: int = 1) -> dict[str, bytes]:
    """content hash -> PNG of each cell of a batch kept for review (flagged, or in the sample of
    negatives: :func:`kept_for_review`), to be kept
    with the batch's records (:meth:`RecordStore.add_records`). The pixels are the ones the model was
    given: the outcome's decoded crop (``pixels``), else the in-memory crop, else the file read
    again; encoded in ``n_workers`` threads."""
    from edgekit.device.pipeline import prefetch

    todo = []
    for out, image in zip(outs, images, strict=True):
        p = out.prediction
        if out.status == "classified" and p is not None and out.content_hash \
                and kept_for_review(p.p_positive, p.decision, cutoff, out.content_hash):
            todo.append((out.content_hash, getattr(out, "pixels", None), image))
    return dict(zip((h for h, _, _ in todo), prefetch(_crop_png, todo, n_workers), strict=True))


def _crop_png(item: tuple[str, np.ndarray | None, Any]) -> bytes:
    _, pixels, image = item
    if pixels is None and not isinstance(image, np.ndarray):
        from edgekit.device.preprocess import read_image

        pixels = read_image(image)
    return encode_png(image if pixels is None else pixels)


def model_call(r: Mapping[str, Any], cutoff: float | None) -> bool:
    """Whether the model counted this record's cell as parasitized."""
    if cutoff is None:
        return r.get("decision") == "positive"
    return (r.get("p_positive") or 0.0) >= cutoff


def review_summary(records: Iterable[Mapping[str, Any]], reviews: Mapping[int, Mapping[str, Any]],
                   cutoff: float | None) -> dict[str, Any]:
    """The model's count and the confirmed count of a session, each with a Wilson 95% interval."""
    cells = [r for r in records if r["status"] == "classified"]
    n = len(cells)
    model = sum(model_call(r, cutoff) for r in cells)
    to_review = [r for r in cells if flagged(r.get("p_positive"), r.get("decision"), cutoff)]
    confirmed = 0
    agreed = overruled = 0
    for r in cells:
        v = reviews.get(int(r["id"]))
        call = model_call(r, cutoff)
        if v is None:
            confirmed += call
            continue
        says = v["verdict"] == "parasitized"
        confirmed += says
        agreed += says == call
        overruled += says != call
    reviewed = sum(int(r["id"]) in reviews for r in to_review)
    return {
        "cells": n,
        "model": {"parasitized": model, "parasitemia": model / n if n else None,
                  "ci95": list(wilson_interval(model, n))},
        "confirmed": {"parasitized": confirmed, "parasitemia": confirmed / n if n else None,
                      "ci95": list(wilson_interval(confirmed, n))},
        "flagged": len(to_review), "reviewed": reviewed, "pending": len(to_review) - reviewed,
        "agreed": agreed, "overruled": overruled,
    }


class ReviewError(EdgekitError):
    """A verdict that cannot be recorded (unknown cell, a cell that was not classified, a bad word)."""


VERDICTS = ("parasitized", "not parasitized", "confirm", "overrule")


def record_verdicts(store: RecordStore, session: Session, pairs: Sequence[tuple[int, str]],
                    reviewer: str | None = None, note: str | None = None) -> dict[str, int]:
    """Record a reviewer's verdicts ``(record id, verdict)`` on cells of ``session``: ``parasitized``,
    ``not parasitized``, or ``confirm`` / ``overrule`` the model's call at the session's cutoff.

    Every pair is checked first, then all are written in one transaction (all or none). A verdict
    already recorded with the same reviewer and note is left as it is, so sending the same verdicts
    again changes nothing; a different verdict replaces the earlier one (one verdict per cell, never
    two). Returns how many were ``new``, ``changed`` (another verdict than before) and ``unchanged``."""
    cutoff = session_cutoff(session)
    records = {int(r["id"]): r for r in store.records(session.id)}
    resolved = []
    for rid, word in pairs:
        if word not in VERDICTS:
            raise ReviewError(f"verdict must be one of {', '.join(VERDICTS)}, not {word!r}")
        r = records.get(int(rid))
        if r is None:
            raise ReviewError(f"no cell {rid} in session {session.id}")
        if r["status"] != "classified":
            raise ReviewError(f"record {rid} was {r['status']}, not classified: nothing to review")
        if word in ("confirm", "overrule"):
            word = "parasitized" if model_call(r, cutoff) == (word == "confirm") else "not parasitized"
        resolved.append((int(rid), word))
    before = store.reviews(session.id)
    tally = {"new": 0, "changed": 0, "unchanged": 0}
    writes = []
    for rid, verdict in dict(resolved).items():  # the last verdict given for a cell counts
        old = before.get(rid)
        if old is None:
            tally["new"] += 1
        elif old["verdict"] != verdict:
            tally["changed"] += 1
        else:
            tally["unchanged"] += 1
            if (old.get("reviewer"), old.get("note")) == (reviewer, note):
                continue  # the same verdict again: nothing to write
        writes.append((rid, verdict))
    if writes:
        store.set_reviews(session.id, writes, reviewer, note)  # one transaction
    return tally


VERDICT_WORDS = {"parasitized": "parasitized", "not parasitized": "not parasitized", "yes": "parasitized",
                 "no": "not parasitized", "confirm": "confirm", "overrule": "overrule"}
MAX_CSV_BYTES = 16 << 20  # a verdict file of ~500,000 rows


def read_verdicts(path: Path) -> list[tuple[int, str]]:
    """A reviewer's verdict CSV (columns record_id, verdict: the words of :data:`VERDICT_WORDS`) as
    (record id, verdict) pairs; a bad row is refused in one line naming it."""
    import csv

    from edgekit.safefile import read_regular_bytes

    try:  # a regular file, bounded, never blocking (a FIFO or /dev/zero is refused before reading)
        text = read_regular_bytes(path, MAX_CSV_BYTES, "verdict CSV").decode("utf-8-sig")
        rows = list(csv.DictReader(text.splitlines()))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise EdgekitError(f"cannot read {path}: {exc}") from None
    out = []
    for k, row in enumerate(rows, start=2):
        rid, verdict = (row.get("record_id") or "").strip(), (row.get("verdict") or "").strip().lower()
        if not rid.isdigit() or verdict not in VERDICT_WORDS:
            raise EdgekitError(f"{path.name} line {k}: need record_id (a number) and verdict "
                               f"({', '.join(VERDICT_WORDS)}), got {rid!r}, {verdict!r}")
        out.append((int(rid), VERDICT_WORDS[verdict]))
    if not out:
        raise EdgekitError(f"{path} holds no verdicts (a CSV with columns record_id,verdict)")
    return out


def session_cutoff(session: Session) -> float | None:
    """The cell cutoff the session is decided with (stored with it); None for sessions recorded
    before edgekit stored it: each record's own decision is then its call."""
    decided = session.decided_with
    return None if decided is None else decided.cutoff


def per_field(records: Iterable[Mapping[str, Any]], cutoff: float | None) -> list[dict[str, Any]]:
    """Cells cut from whole fields (source ids ``field.jpg#12``): per field, the cells, the count
    called parasitized at the cutoff, the parasitemia and its Wilson 95% interval."""
    fields: dict[str, list[bool]] = {}
    for r in records:
        if r["status"] == "classified" and "#" in r["source_id"]:
            fields.setdefault(r["source_id"].rsplit("#", 1)[0], []).append(model_call(r, cutoff))
    out = []
    for name, calls in fields.items():
        k, n = sum(calls), len(calls)
        out.append({"field": name, "cells": n, "parasitized": k, "parasitemia": k / n,
                    "ci95": list(wilson_interval(k, n))})
    return out


def summary_lines(summary: Mapping[str, Any], fields: list[dict[str, Any]]) -> list[str]:
    """Human-readable lines for ``sessions show``."""
    def pct(d: Mapping[str, Any]) -> str:
        lo, hi = d["ci95"]
        share = 100 * (d["parasitemia"] or 0)
        return f"{d['parasitized']} ({share:.2f}%, 95% CI {100 * lo:.2f}-{100 * hi:.2f}%)"

    lines = []
    for f in fields:
        lo, hi = f["ci95"]
        lines.append(f"  field {f['field']:<28} {f['cells']:5d} cells {f['parasitized']:4d} parasitized "
                     f"{100 * f['parasitemia']:6.2f}% (95% CI {100 * lo:.2f}-{100 * hi:.2f}%)")
    lines.append(f"model count:     {pct(summary['model'])} of {summary['cells']} cells")
    # agreed/overruled count every verdict, the sampled negatives' too: not a part of "reviewed"
    lines.append(f"confirmed count: {pct(summary['confirmed'])}; reviewed {summary['reviewed']} of "
                 f"{summary['flagged']} flagged cells ({summary['pending']} pending); verdicts: "
                 f"{summary['agreed']} agreed, {summary['overruled']} overruled")
    return lines


def gallery_items(store: RecordStore, session: Session, cutoff: float | None, everything: bool = False
                  ) -> list[dict[str, Any]]:
    """The flagged cells of a session, then its sample of negatives (or all classified cells), most
    suspicious first, with their kept crop (PNG bytes or None) and review."""
    images = store.crop_images(session.id)
    reviews = store.reviews(session.id)
    items = []
    for r in store.records(session.id):
        if r["status"] != "classified":
            continue
        is_flagged = flagged(r.get("p_positive"), r.get("decision"), cutoff)
        sampled = not is_flagged and sampled_negative(r.get("content_hash")) and int(r["id"]) in images
        if not (everything or is_flagged or sampled):
            continue
        items.append({"id": int(r["id"]), "source": r["source_id"], "p": r.get("p_positive"),
                      "decision": r.get("decision"), "called": model_call(r, cutoff),
                      "negative_sample": sampled,
                      "png": images.get(int(r["id"])), "review": reviews.get(int(r["id"]))})
    items.sort(key=lambda it: (it["negative_sample"], -(it["p"] or 0.0)))
    return items


def _tile(png: bytes | None) -> np.ndarray:
    import cv2

    tile = np.full((TILE, TILE, 3), 40, np.uint8)
    if png:
        bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        if bgr is not None:
            h, w = bgr.shape[:2]
            s = (TILE - 4) / max(h, w)
            size = (max(1, round(w * s)), max(1, round(h * s)))
            small = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            y, x = (TILE - small.shape[0]) // 2, (TILE - small.shape[1]) // 2
            tile[y : y + small.shape[0], x : x + small.shape[1]] = small[:, :, ::-1]
    return tile


def _state(it: Mapping[str, Any]) -> tuple[str, tuple[int, int, int]]:
    """A short text and a colour: red counted parasitized, orange uncertain below the cutoff;
    the reviewer's verdict, when there is one, replaces it (green: not parasitized)."""
    if it["review"] is not None:
        par = it["review"]["verdict"] == "parasitized"
        return ("REV: par" if par else "REV: not"), ((200, 0, 160) if par else (30, 170, 60))
    if it["called"]:
        return ("par?" if it["decision"] == "uncertain" else "par"), (230, 30, 30)
    if it.get("negative_sample"):
        return "neg (sample)", (120, 120, 120)
    return "unc", (240, 150, 0)


def contact_sheet(items: list[dict[str, Any]], title: str, cols: int = 8) -> bytes:
    """A PNG contact sheet: one tile per cell (the kept crop, a coloured frame, its record id and p)."""
    import cv2

    rows = max(1, -(-len(items) // cols))
    cell_h = TILE + 18
    sheet = np.full((30 + rows * cell_h, cols * (TILE + 6) + 6, 3), 255, np.uint8)
    cv2.putText(sheet, title[:120], (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for k, it in enumerate(items):
        r, c = divmod(k, cols)
        y, x = 30 + r * cell_h, 6 + c * (TILE + 6)
        tile = _tile(it["png"])
        text, colour = _state(it)
        cv2.rectangle(tile, (0, 0), (TILE - 1, TILE - 1), colour, 3)
        sheet[y : y + TILE, x : x + TILE] = tile
        label = f"#{it['id']} {it['p'] or 0:.2f} {text}"
        cv2.putText(sheet, label, (x, y + TILE + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.33, colour, 1, cv2.LINE_AA)
    return encode_png(sheet)


def html_page(items: list[dict[str, Any]], title: str, summary_text: list[str], confirm_hint: str) -> str:
    """A self-contained HTML page (images inline) of the cells to review, with how to record verdicts."""
    import html  # deferred: only the review pages need it (screen does not: 0.35 MB with base64)

    cards = []
    for it in items:
        text, colour = _state(it)
        rev = it["review"]
        who = f" by {html.escape(rev['reviewer'])}" if rev and rev.get("reviewer") else ""
        caption = (f'<b>#{it["id"]}</b> p={it["p"] or 0:.3f} {html.escape(str(it["decision"]))}<br>'
                   f'{html.escape(it["source"])}<br>{html.escape(text)}{html.escape(who)}')
        cards.append((it["png"], f"cell {it['id']}", caption, colour))
    legend = ("Frame colours: red = counted parasitized by the model, orange = uncertain (not counted), "
              "grey = a random sample of cells the model called negative (confirm those too: they teach a "
              "site model both sides), purple/green = a reviewer said parasitized / not parasitized. Most "
              "suspicious first.")
    hint = f"Record your verdicts: <code>{html.escape(confirm_hint)}</code>"
    return gallery_page(cards, title, summary_text, legend, hint,
                        "No cell was called parasitized or uncertain.")


def gallery_page(cards: Sequence[tuple[bytes | None, str, str, tuple[int, int, int]]], title: str,
                 summary_text: Sequence[str], legend: str, hint_html: str, empty: str) -> str:
    """A self-contained HTML page (images inline): one framed card per (png, alt text, caption HTML,
    frame colour), under a title, a summary list, a legend and a hint (HTML)."""
    import base64
    import html

    figures = []
    for png, alt, caption, colour in cards:
        data = base64.b64encode(png).decode() if png else ""
        img = (f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
               if png else '<div class="none">crop not kept</div>')
        figures.append(f'<figure style="border-color: rgb{colour}">{img}'
                       f'<figcaption>{caption}</figcaption></figure>')
    body = "\n".join(figures) or f"<p>{html.escape(empty)}</p>"
    lines = "".join(f"<li>{html.escape(s.strip())}</li>" for s in summary_text)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
figure {{ display: inline-block; margin: 4px; padding: 4px; border: 4px solid; width: 150px;
         vertical-align: top; }}
figure img {{ width: 140px; height: 140px; object-fit: contain; background: #000; }}
figcaption {{ font-size: 11px; word-break: break-all; }}
.none {{ width: 140px; height: 140px; background: #333; color: #ccc; font-size: 12px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<ul>{lines}</ul>
<p>{html.escape(legend)}</p>
<p>{hint_html}</p>
{body}
</body></html>
"""
