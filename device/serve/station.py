# pyright: basic
"""The screening station behind ``edgekit serve``: one classifier, one screening database, one worker.

Every call that touches the model or the database runs on one worker thread (LiteRT interpreters
and SQLite connections belong to one thread), so uploads from several phones are processed one at
a time, in arrival order. An uploaded field goes through exactly what ``edgekit field`` does
(:func:`edgekit.device.field.analyze_field`) and its cells are recorded through exactly what
``edgekit screen --fields`` does (:func:`edgekit.device.screening.record_crops` on the device's
own crops), so the page, the command line and the database agree. A crop goes through what
``edgekit screen`` does with a file. Decoding is the device's :func:`read_image`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from edgekit.errors import EdgekitError, ImageError

if TYPE_CHECKING:
    from edgekit.device.field.classify import Known
    from edgekit.device.pipeline import Outcome
    from edgekit.device.records import RecordStore, Session
    from edgekit.device.runtime import Classifier
    from edgekit.device.sessions import SessionReadout

T = TypeVar("T")
KINDS = ("field", "crop")
OVERLAY_MAX_SIDE = 1600  # px: the full-size overlay (the size fields are measured at)
PHONE_OVERLAY_SIDE = 1024  # px: the overlay shown on a phone's screen (about a third of the bytes)
PHONE_UPLOAD_QUALITY = 0.9  # JPEG quality of a field photo the page shrinks before sending
_HASH = re.compile(r"^[0-9a-f]{64}$")
RECORD_KEYS = ("source_id", "source_kind", "status", "reason", "label", "probability", "p_positive",
               "decision", "created_at")


class ServeError(EdgekitError):
    """A request the station refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def display_name(name: str | None, sha256: str) -> str:
    """A safe, unique file name for an upload: its own name's safe characters plus a short hash
    (phones name every photo ``image.jpg``)."""
    path = Path((name or "upload").replace("\\", "/")).name
    stem, suffix = Path(path).stem, Path(path).suffix.lower()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:48] or "upload"
    suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ""
    return f"{stem}-{sha256[:8]}{suffix}"


def known_cell(out: Outcome | None, classifier: Classifier) -> Known | None:
    """What recording a cell's crop found (its counted-class probability and domain score, the
    numbers `edgekit field` gives it), when the model classified it; None when it did not (refused
    by a crop gate, already recorded, past the stop rule)."""
    from edgekit.device.field.classify import Known

    if out is None or out.prediction is None:
        return None
    return Known(out.prediction.probabilities[classifier.manifest.decision.counted_index], out.domain_score)


class Station:
    """The classifier and the screening database, used from one worker thread."""

    def __init__(self, classifier: Classifier, db_path: Path, overlay_dir: Path,
                 untrusted: str | None = None) -> None:
        """``untrusted``: why the bundle is not trusted, when it runs with ``--allow-unsigned`` (the
        page shows it on every screen)."""
        from edgekit.device.records import RecordStore

        self.classifier = classifier
        self.untrusted = untrusted
        self.db_path = Path(db_path)
        self.overlay_dir = Path(overlay_dir)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgekit-device")
        self.store: RecordStore = self._pool.submit(RecordStore, self.db_path).result()
        self.pending = 0  # uploads received or queued, counted by the server's event loop
        self.in_flight: dict[str, int] = {}  # content hashes received and not yet answered (event loop)
        self.overlay_problems: dict[str, str] = {}  # why a field's overlay could not be written, by hash
        self._pool.submit(self._create_upload_log).result()

    def _create_upload_log(self) -> None:
        """The station's answer to each upload, by session and content hash, so a phone whose answer
        was lost on the way can ask what became of its photo (the records themselves are unchanged)."""
        with self.store.conn:
            self.store.conn.execute(
                "CREATE TABLE IF NOT EXISTS serve_uploads (session_id INTEGER NOT NULL, sha256 TEXT NOT NULL,"
                " kind TEXT NOT NULL, answer TEXT NOT NULL, created_at REAL NOT NULL,"
                " PRIMARY KEY (session_id, sha256))")

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on the worker thread."""
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.submit(self.store.close).result()
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ read side

    def info(self) -> dict[str, Any]:
        """The model and the Decision it screens with, for the page's header; how the page shrinks a
        field photo before sending it (to the largest size the field pipeline measures)."""
        from edgekit.device.field.focus import MAX_SIDE

        clf = self.classifier
        return {
            "upload": {"field_max_side": MAX_SIDE, "jpeg_quality": PHONE_UPLOAD_QUALITY},
            "model": {"format": clf.fmt, "sha256": clf.model_sha256, "bundle": str(clf.bundle_dir),
                      "labels": list(clf.manifest.labels),
                      "manifest_sha256": getattr(clf, "manifest_sha256", None)},
            "decision": clf.manifest.decision.to_dict(),
            "untrusted": self.untrusted,
        }

    def _sessions(self) -> list[Session]:
        """Every session, newest first (by id only: a patient id may look like a number)."""
        from edgekit.device.sessions import all_sessions

        return all_sessions(self.store)

    def _session(self, session_id: int) -> Session:
        found = self.store.session_by_id(session_id)
        if found is None:
            raise ServeError(404, f"no session {session_id}")
        return found

    def _view(self, session: Session, seen: SessionReadout | None = None) -> dict[str, Any]:
        """A session as every answer shows it: the session, the patient summary (what ``edgekit
        sessions show`` says, from what is stored with the session: its Decision and domain guard,
        never the bundle; None for a session recorded before decisions were stored) and the review
        summary (model count and confirmed count)."""
        from edgekit.device.sessions import read_session

        seen = seen or read_session(self.store, session)
        summary = None if seen.summary is None else seen.summary.to_dict()
        return {"session": self._public(session), "summary": summary, "review": seen.review}

    @staticmethod
    def _public(session: Session) -> dict[str, Any]:
        from edgekit.device.sessions import public_session

        return public_session(session, full_guard=False)

    def open_session(self, patient: str, site: str | None, operator: str | None,
                     phone: str | None = None) -> dict[str, Any]:
        """The patient's session with this model and manifest, created or resumed (two phones share it);
        ``phone``: the phone that opened it, which lists it from now on."""
        from edgekit.device.sessions import screened_with

        clf = self.classifier
        session = self.store.open_session(patient.strip(), clf.model_sha256, site or None, operator or None,
                                          clf.fmt, str(clf.bundle_dir), clf.manifest.decision,
                                          screened_with(clf))
        if phone is not None:
            self.store.add_session_phone(session.id, phone)
        return self._view(session)

    def phone_sessions(self, phone: str) -> set[int]:
        """The ids of the sessions ``phone`` opened."""
        return self.store.phone_sessions(phone)

    def _visible(self, phone: str | None) -> list[Session]:
        """Every session, newest first; for a ``phone``, only those it opened."""
        if phone is None:
            return self._sessions()
        own = self.store.phone_sessions(phone)
        return [s for s in self._sessions() if s.id in own]

    def sessions(self, limit: int | None = None, phone: str | None = None) -> list[dict[str, Any]]:
        """The sessions in the database, newest first (at most ``limit``; for a ``phone``, those it
        opened), with their summaries."""
        return [self._view(s) for s in self._visible(phone)[:limit]]

    def drift(self, window: int | None = None) -> dict[str, Any]:
        """``edgekit sessions list``'s drift view: per site and model whose bundle has guard statistics,
        the rolling median of its recent sessions' guard scores and its status (ok / watch / drift);
        ``current`` marks this station's model."""
        from edgekit.device.drift import WINDOW, rolling_view, session_points
        from edgekit.device.sessions import summarized_sessions

        w = window or WINDOW
        _, sites = rolling_view(session_points(summarized_sessions(self.store)), w)
        sha = self.classifier.model_sha256
        return {"window": w, "sites": [{**s.to_dict(), "current": s.model_sha256 == sha}
                                       for s in sites if s.drift.threshold is not None]}

    def session(self, session_id: int, with_records: bool = True) -> dict[str, Any]:
        """One session: its summaries and (unless not wanted) its records, oldest first."""
        from edgekit.device.sessions import read_session

        session = self._session(session_id)
        seen = read_session(self.store, session)
        out = self._view(session, seen)
        if with_records:
            out["records"] = [{k: r[k] for k in RECORD_KEYS} for r in seen.records]
        return out

    def export_csv(self, session_id: int | None, phone: str | None = None) -> str:
        """The records of one session (or all; for a ``phone``, all it opened) as `edgekit sessions
        export` writes them, through the safe CSV writer (CR/LF quoted, formula-like cells made inert)."""
        from edgekit.device.sessions import EXPORT_COLUMNS, export_rows
        from edgekit.outputs import csv_text

        chosen = [self._session(session_id)] if session_id is not None else self._visible(phone)
        return csv_text(export_rows(self.store, chosen), EXPORT_COLUMNS)

    # ------------------------------------------------------------------ review

    def review(self, session_id: int, everything: bool = False) -> dict[str, Any]:
        """The review gallery of a session (:func:`edgekit.device.review.gallery_items`): the cells
        the model called parasitized or uncertain, then its sample of negatives (``everything``: every
        classified cell), most suspicious first, each with its verdict and the address of its kept crop."""
        from edgekit.device.review import gallery_items, session_cutoff

        session = self._session(session_id)
        items = gallery_items(self.store, session, session_cutoff(session), everything)
        out = self._view(session)
        out["items"] = [self._item(session, it) for it in items]
        return out

    @staticmethod
    def _item(session: Session, it: dict[str, Any]) -> dict[str, Any]:
        review = it["review"]
        return {
            "id": it["id"], "source": it["source"], "p": it["p"], "decision": it["decision"],
            "called": bool(it["called"]), "negative_sample": bool(it.get("negative_sample")),
            "image": f"api/sessions/{session.id}/cells/{it['id']}.png" if it["png"] else None,
            "review": Station._verdict(review),
        }

    @staticmethod
    def _verdict(review: dict[str, Any] | None) -> dict[str, Any] | None:
        keys = ("verdict", "reviewer", "note", "created_at")
        return None if review is None else {k: review.get(k) for k in keys}

    def cell_png(self, session_id: int, record_id: int) -> bytes:
        """The kept crop of one cell (what the model classified), as PNG."""
        session = self._session(session_id)
        png = self.store.crop_image(session.id, record_id)
        if png is None:
            raise ServeError(404, f"no kept crop for cell {record_id} in session {session.id} (only cells "
                                  "called parasitized or uncertain are kept)")
        return png

    def confirm(self, session_id: int, verdicts: list[tuple[int, str]], reviewer: str | None,
                note: str | None) -> dict[str, Any]:
        """Record a reviewer's verdicts (:func:`edgekit.device.review.record_verdicts`: all or none;
        the same verdict again changes nothing); the session's summaries after them, and the cells."""
        from edgekit.device.review import ReviewError, record_verdicts

        session = self._session(session_id)
        try:
            tally = record_verdicts(self.store, session, verdicts, reviewer or None, note or None)
        except ReviewError as exc:
            raise ServeError(422, str(exc)) from exc
        reviews = self.store.reviews(session.id)
        out = self._view(self._session(session.id))
        out.update(recorded=tally, reviews={str(rid): self._verdict(reviews.get(rid)) for rid, _ in verdicts})
        return out

    def overlay_path(self, sha256: str, phone: bool = False) -> Path:
        """The overlay file of a field (``phone``: its screen-sized copy, where there is one); on the
        worker, so a file still being written is waited for."""
        if not _HASH.match(sha256):
            raise ServeError(404, "no such overlay")
        path = self.overlay_dir / f"{sha256}.jpg"
        small = self.overlay_dir / f"{sha256}.phone.jpg"
        if phone and small.is_file():
            return small
        if not path.is_file():
            raise ServeError(404, self.overlay_problems.get(sha256, "no such overlay"))
        return path

    def upload(self, session_id: int, sha256: str) -> dict[str, Any]:
        """What became of the upload with this content hash in the session: ``recorded`` (with the
        answer it was given, when the station kept it) or ``not recorded``."""
        if not _HASH.match(sha256):
            raise ServeError(422, "sha256 must be 64 lowercase hexadecimal characters")
        session = self._session(session_id)
        conn = self.store.conn
        row = conn.execute("SELECT answer FROM serve_uploads WHERE session_id = ? AND sha256 = ?",
                           (session.id, sha256)).fetchone()
        answer = json.loads(row[0]) if row else None
        # a station stopped between recording and keeping its answer: the records still say it
        found = row is not None or conn.execute(
            "SELECT 1 FROM records WHERE session_id = ? AND (content_hash = ? OR source_id LIKE ?) LIMIT 1",
            (session.id, sha256, f"%-{sha256[:8]}%")).fetchone() is not None
        out = {"sha256": sha256, "state": "recorded" if found else "not recorded", "answer": answer}
        out.update(self._view(session))
        return out

    def uploads(self, session_id: int) -> dict[str, Any]:
        """Every upload of the session the station kept its answer to, oldest first, as the page
        shows it after a reload (its per-cell lists left out); a field counted in place of another
        says so (``current``: ``replaced``). Uploads whose answer was never kept are in the counts."""
        session = self._session(session_id)
        replaced = {f["source_id"] for f in self.store.fields(session.id, counted_only=False)
                    if f["status"] == "replaced"}
        rows = self.store.conn.execute(
            "SELECT sha256, kind, answer, created_at FROM serve_uploads WHERE session_id = ?"
            " ORDER BY created_at, rowid", (session.id,)).fetchall()
        items = []
        for sha, kind, text, created in rows:
            answer = json.loads(text)
            if isinstance(answer.get("result"), dict):
                answer["result"].pop("cell_list", None)
            answer["current"] = "replaced" if answer.get("name") in replaced else None
            items.append({"sha256": sha, "kind": kind, "created_at": created, "answer": answer})
        out = self._view(session)
        out["uploads"] = items
        return out

    # ------------------------------------------------------------------ write side

    def add_image(self, session_id: int, kind: str, name: str | None, data: bytes,
                  replace: bool = False) -> dict[str, Any]:
        """Decode, analyse, record one uploaded field or crop; the result as the page shows it.
        ``replace``: a field already counted in the session is counted again in place of the one
        recorded, when this take is sharper (the old field's cells are marked replaced)."""
        from edgekit.device.pipeline import MAX_CROP_PIXELS
        from edgekit.device.preprocess import read_image

        if kind not in KINDS:
            raise ServeError(422, f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if not data:
            raise ServeError(400, "empty upload (0 bytes)")
        session = self._session(session_id)
        self._check_same_bundle(session)
        sha = hashlib.sha256(data).hexdigest()
        shown = display_name(name, sha)
        with tempfile.TemporaryDirectory(prefix="edgekit-upload-") as tmp:
            path = Path(tmp) / shown
            path.write_bytes(data)
            try:
                # a crop has the crop path's bound, as in `edgekit screen` (a 36 MP "crop" took 7 s)
                rgb = read_image(path, MAX_CROP_PIXELS) if kind == "crop" else read_image(path)
            except ImageError as exc:
                raise ServeError(415, f"{name or 'upload'}: not a usable image ({exc})") from exc
            except MemoryError as exc:
                raise ServeError(413, f"{name or 'upload'}: too large to decode on this device") from exc
        stop = self.classifier.manifest.decision.rule.stop_cells
        if kind == "field":
            out = self._add_field(session, shown, sha, rgb, stop, replace)
        else:
            out = self._add_crop(session, shown, sha, rgb, stop)
        out.update(kind=kind, name=shown, sha256=sha)
        self._keep_answer(session, sha, kind, out)
        out.update(self._view(self._session(session.id)))
        return out

    def _keep_answer(self, session: Session, sha: str, kind: str, answer: dict[str, Any]) -> None:
        """Keep the first answer given to this photo in this session (a resend is answered, not kept;
        a resend that replaced the counted field is kept instead); the overlay's marks are for the
        page that holds the photo, the overlay files for the others."""
        kept = {k: v for k, v in answer.items() if k != "marks"}
        keep = "REPLACE" if (answer.get("field") or {}).get("verdict") == "replace" else "IGNORE"
        try:
            with self.store.conn:
                self.store.conn.execute(
                    f"INSERT OR {keep} INTO serve_uploads (session_id, sha256, kind, answer, created_at)"
                    " VALUES (?, ?, ?, ?, ?)", (session.id, sha, kind, json.dumps(kept), time.time()))
        except sqlite3.Error:
            pass  # the cells are recorded; a later question about this photo is answered from them

    def _check_same_bundle(self, session: Session) -> None:
        """Cells are added only to a session of this station's model file and manifest: another
        session's records and decision rule stay as they were screened."""
        clf = self.classifier
        if session.model_sha256 != clf.model_sha256 or session.manifest_sha256 != clf.manifest_sha256:
            raise ServeError(409, f"session {session.id} was screened with another model or manifest than "
                                  "this station's: open a session for the patient here to add cells")

    def _record(self, session: Session, items: list, kind: str, stop: int, field=None,
                on_outcome: Callable[[Outcome], None] | None = None, features=None) -> dict[str, int]:
        """Record ``items`` as ``edgekit screen`` does, but all of one request in one transaction (one
        batch): a request records everything or nothing (a full database answers 503 with nothing of
        the field recorded). How many were new, already there, past the stop; ``on_outcome`` sees
        each recorded outcome; ``features``: as for ``record_crops``."""
        from edgekit.device.quality import DEFAULT_GATES
        from edgekit.device.screening import record_crops

        tally = record_crops(self.store, session, items, self.classifier, DEFAULT_GATES, stop, kind,
                             on_outcome=on_outcome, batch_size=max(1, len(items)), field=field,
                             features=features)
        new, already = tally.processed, tally.counts.get("skipped", 0)
        return {"new": new, "already": already, "after_stop": len(items) - new - already}

    def _add_field(self, session: Session, shown: str, sha: str, rgb, stop: int,
                   replace: bool = False) -> dict[str, Any]:
        from edgekit.device.field import cell_id
        from edgekit.device.field.classify import classify_field, segment_field
        from edgekit.device.field.focus import rule_of
        from edgekit.device.field.overlay import overlay_marks
        from edgekit.device.field.quality import field_focus
        from edgekit.device.output import RefusedCells
        from edgekit.device.records import FieldCountedMeanwhile
        from edgekit.device.screening import (
            check_field,
            features_by_id,
            field_items,
            field_refusal,
            sharper_than,
        )

        clf = self.classifier
        rule = rule_of(clf)  # the bundle's focus rule
        focus = field_focus(rgb, rule)  # once, for the gate and the session's check (as `screen --fields`)
        report, _ = segment_field(rgb, clf, focus=focus)
        report.source = shown
        feats = None
        if report.rejected is None and report.cells:  # refused whole as `screen --fields` refuses it
            reason, feats = field_refusal(rgb, report.cells, clf)
            if reason:
                report.rejected, report.cells, feats = reason, [], None
        seen: dict[str, Outcome] = {}
        for attempt in (1, 2):
            check = None
            if report.rejected:  # recorded once as rejected, like `edgekit screen --fields`
                items = [(shown, sha, ImageError(report.rejected))]
            else:  # the session's judgement: already counted (a retake)? well below its recent focus?
                check = check_field(self.store, session, shown, rgb, replace, focus, rule)
                items = field_items(shown, rgb, report.cells, check, sha)
            try:
                recorded = self._record(session, items, "field", stop, check.entry if check else None,
                                        lambda out: seen.update({out.source_id: out}),
                                        features_by_id(shown, report.cells, feats))
                break
            except FieldCountedMeanwhile:  # another process on the database counted it first: judge again
                if attempt == 2:
                    raise
        # the answer is `edgekit field`'s: the cells just recorded are not classified a second time
        classify_field(report, rgb, clf, known=[known_cell(seen.get(cell_id(shown, c.id)), clf)
                                                for c in report.cells], features=feats)
        field = None
        if check is not None:
            if not check.counted:
                report.rejected = check.reason
            dup = check.duplicate_of
            field = {"verdict": check.verdict, "sharpness": round(check.sharpness, 4),
                     "duplicate_of": None if dup is None else dup["source_id"], "message": check.reason,
                     # sent again with replace, this take would be counted in place of the counted one
                     "sharper": check.verdict == "duplicate" and dup is not None and
                     sharper_than(check.sharpness, dup)}
            if check.verdict == "duplicate":  # its cells are recorded once, with the counted field
                assert dup is not None  # a duplicate names the field it repeats
                recorded["already"] = sum(r["field_id"] == dup["id"] for r in self.store.records(session.id))
        # the page draws the overlay from the marks: its files are written once this answer is on
        # its way (this worker's next job; a request for them waits behind it)
        self._pool.submit(self._write_overlay_later, session.id, sha, rgb, report)
        return {"result": report.to_dict(per_cell=True), "recorded": recorded, "field": field,
                # the cells recorded as refused, one line per reason, as `screen --fields` says them
                "not_classified": RefusedCells.of_field(shown, report.cells, seen.values()),
                "overlay": f"api/overlays/{sha}.jpg", "overlay_phone": f"api/overlays/{sha}.jpg?size=phone",
                "overlay_problem": None, "marks": overlay_marks(report)}

    def _add_crop(self, session: Session, shown: str, sha: str, rgb, stop: int) -> dict[str, Any]:
        recorded = self._record(session, [(shown, sha, rgb)], "file", stop)
        row = next((r for r in self.store.records(session.id) if r["content_hash"] == sha), None)
        result = {k: row[k] for k in RECORD_KEYS} if row else None
        return {"result": result, "recorded": recorded, "overlay": None, "overlay_phone": None}

    def _write_overlay_later(self, session_id: int, sha: str, rgb, report) -> None:
        """Write a field's overlay files after its answer; one that cannot be written (a full disk:
        the cells are counted anyway) is said by its address (404 with the reason) and by the answer
        kept for the photo."""
        problem = self._write_overlay(sha, rgb, report)
        if problem is None:
            self.overlay_problems.pop(sha, None)
            return
        self.overlay_problems[sha] = problem
        row = self.store.conn.execute("SELECT answer FROM serve_uploads WHERE session_id = ? AND sha256 = ?",
                                      (session_id, sha)).fetchone()
        if row is None:
            return
        kept = {**json.loads(row[0]), "overlay": None, "overlay_phone": None, "overlay_problem": problem}
        try:
            with self.store.conn:
                self.store.conn.execute("UPDATE serve_uploads SET answer = ? WHERE session_id = ?"
                                        " AND sha256 = ?", (json.dumps(kept), session_id, sha))
        except sqlite3.Error:
            pass  # the overlay's address says it too

    def _write_overlay(self, sha: str, rgb, report) -> str | None:
        """Write the field's overlay JPEG; why not, when it cannot be (the cells are counted anyway)."""
        import cv2

        from edgekit.device.field import draw_overlay
        from edgekit.manifest import atomic_write_bytes

        img = draw_overlay(rgb, report)
        # the phone's copy first: a station stopped in between leaves no full one (its address)
        for suffix, side, quality in ((".phone.jpg", PHONE_OVERLAY_SIDE, 70), (".jpg", OVERLAY_MAX_SIDE, 85)):
            scale = side / max(img.shape[:2])
            out = img if scale >= 1 else cv2.resize(img, None, fx=scale, fy=scale,
                                                    interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", out[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                return "counted, no overlay: the overlay could not be encoded"
            try:
                atomic_write_bytes(self.overlay_dir / f"{sha}{suffix}", buf.tobytes())
            except OSError as exc:
                return f"counted, no overlay: {exc.strerror or exc} ({self.overlay_dir})"
        return None
