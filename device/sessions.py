# pyright: basic
"""Screening sessions read back: what `edgekit sessions list/show/export` and `edgekit serve` show.

Everything here comes from the screening database alone: a session's records, the Decision, the
domain guard (statistics and thresholds) and the manifest sha256 and signer it was screened with are
stored with it (:class:`edgekit.device.records.ScreenedWith`), so moving, editing or deleting the
bundle changes no stored or shown verdict, and no manifest is ever read again here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from edgekit.device.records import ScreenedWith
from edgekit.digest import sha256

if TYPE_CHECKING:
    from edgekit.device.records import RecordStore, Session
    from edgekit.device.runtime import Classifier
    from edgekit.device.screening import PatientSummary
    from edgekit.manifest import Decision, Domain

GUARD_NOT_STORED = "stored without its guard: verdict as recorded"
NO_DECISION = ("no decision rule is stored with this session (recorded by an older edgekit); "
               "rescreen it with its bundle to decide it")


def screened_with(classifier: Classifier) -> ScreenedWith:
    """What a session screened by ``classifier`` stores besides its Decision: the canonical manifest's
    sha256, the signer and the trust check as made at load, and the domain guard as used."""
    from edgekit.signing import canonical_manifest

    manifest_sha = getattr(classifier, "manifest_sha256", None) or sha256(
        canonical_manifest(classifier.manifest.to_dict())).hexdigest()
    trust = getattr(classifier, "trust", None)
    if trust is None:
        return ScreenedWith(manifest_sha, None, "signature not checked", classifier.manifest.domain)
    text = trust.reason if trust.trusted else f"untrusted: {trust.reason}"
    signer = trust.key_id if trust.trusted else None
    return ScreenedWith(manifest_sha, signer, text, classifier.manifest.domain)


def session_summary(store: RecordStore, session: Session,
                    records: list[dict[str, Any]] | None = None) -> PatientSummary | None:
    """The session's summary, decided with what is stored with it: its Decision and its domain guard
    (a session stored without its guard is decided by its rule alone and says so). None when no
    Decision is stored (recorded before decisions were stored): no default rule is substituted.
    ``records``: the session's records when the caller has read them already."""
    if not session.decision:
        return None
    if records is None:  # only what the summary reads: ~1.5 MB less at the end of a run of 1,000 cells
        from edgekit.device.screening import SUMMARY_COLUMNS

        records = store.records(session.id, SUMMARY_COLUMNS)
    return _decided(session, records)


def _summarize(session: Session, records: list[dict[str, Any]], decision: Decision,
               domain: Domain | None) -> PatientSummary:
    from edgekit.device.screening import summarize

    if not session.guard_stored:
        summary = summarize(session.patient, records, decision, domain=False)
        summary.note = GUARD_NOT_STORED
        return summary
    return summarize(session.patient, records, decision, domain=domain)


@dataclass
class SessionReadout:
    """One session read once (its records, its reviews, its Decision and guard decoded once) and
    what `sessions show` and the phone page show of it."""

    session: Session
    records: list[dict[str, Any]]
    reviews: dict[int, dict[str, Any]]
    decision: Decision | None  # None: recorded before decisions were stored
    domain: Domain | None
    summary: PatientSummary | None
    review: dict[str, Any]  # model count and confirmed count (:func:`edgekit.device.review.review_summary`)
    fields: list[dict[str, Any]]  # per-field counts (:func:`edgekit.device.review.per_field`)

    def review_lines(self) -> list[str]:
        """Per-field parasitemia, model count and confirmed count lines."""
        from edgekit.device.review import summary_lines

        return summary_lines(self.review, self.fields)

    def guard_fields(self) -> list[dict[str, Any]]:
        """The guard's verdict on each field (empty: no fields, no Decision or no guard)."""
        from edgekit.device.drift import field_guard

        if self.summary is None or self.domain is None:
            return []
        return field_guard(self.records, self.domain)


def read_session(store: RecordStore, session: Session) -> SessionReadout:
    """A session's :class:`SessionReadout`: one read of its records, one of its reviews."""
    from edgekit.device.review import per_field, review_summary

    records, reviews = store.records(session.id), store.reviews(session.id)
    decision, domain = session.decided_with, session.guarded_with
    summary = None if decision is None else _summarize(session, records, decision, domain)
    cutoff = None if decision is None else decision.cutoff
    return SessionReadout(session, records, reviews, decision, domain, summary,
                          review_summary(records, reviews, cutoff), per_field(records, cutoff))


def all_sessions(store: RecordStore) -> list[Session]:
    """Every session, newest first, from one query."""
    from edgekit.device.records import Session

    return [Session.from_row(row) for row in store.sessions()]


def summarized_sessions(store: RecordStore) -> list[tuple[Session, PatientSummary | None]]:
    """Every session (newest first) with its summary (None: no Decision stored), from two queries
    however many sessions there are: the sessions, then all records, one session at a time."""
    sessions = all_sessions(store)
    by_id = {s.id: s for s in sessions}
    summaries: dict[int, PatientSummary | None] = {}
    for session_id, records in store.records_by_session():
        if session_id in by_id:
            summaries[session_id] = _decided(by_id[session_id], records)
    return [(s, summaries[s.id] if s.id in summaries else _decided(s, [])) for s in sessions]


def _decided(session: Session, records: list[dict[str, Any]]) -> PatientSummary | None:
    decision = session.decided_with
    return None if decision is None else _summarize(session, records, decision, session.guarded_with)


GUARD_BRIEF = ("field_threshold", "session_threshold", "min_cells", "min_chroma", "max_border_lit",
               "max_crop_distance", "n", "source")


def public_session(session: Session, full_guard: bool = True) -> dict[str, Any]:
    """The session's stored fields as JSON values (decision and guard parsed). ``full_guard=False``
    keeps the guard's thresholds and leaves out its statistics (~3 kB a session, for the phone page)."""
    import json

    d = dict(vars(session))
    d["decision"] = json.loads(session.decision) if session.decision else None
    guard = json.loads(session.guard) if session.guard else None
    if guard and guard.get("domain") and not full_guard:
        guard = {"domain": {k: guard["domain"].get(k) for k in GUARD_BRIEF}}
    d["guard"] = guard
    return d


def provenance_lines(session: Session) -> list[str]:
    """How ``sessions show`` names what decided the session (all of it from the database)."""
    from edgekit.device.domain import GUARD_UNIT

    model = f"model {session.model_format or '?'} sha256 {session.model_sha256[:16]}…"
    lines = [f"{model}  bundle {session.bundle} (as screened; not read again)"]
    if session.manifest_sha256:
        trust = session.trust or "trust not recorded"
        lines.append(f"manifest sha256 {session.manifest_sha256[:16]}…  {trust}")
    if not session.guard_stored:
        lines.append(f"domain guard: {GUARD_NOT_STORED}")
    else:
        dom = session.guarded_with
        lines.append("domain guard: none in the bundle (nothing vouches for the cells)" if dom is None else
                     f"domain guard: vouches for a session up to a median {dom.session_threshold:.2f} "
                     f"{GUARD_UNIT}, over >= {dom.min_cells} cells (stored with the session)")
    return lines


EXPORT_COLUMNS = ["session_id", "patient", "site", "operator", "source_id", "source_kind", "content_hash",
                  "status", "reason", "label", "probability", "p_positive", "decision", "model_sha256",
                  "created_at", "review", "reviewer",  # review: a reviewer's verdict on the cell, if any
                  "domain_score",  # the domain guard's distance for this crop (blank: none measured)
                  # the session's verdict as stored (`sessions show`), and whether the guard vouched
                  # for its cells: "no" means NOT VALIDATED for this microscope
                  "session_result", "session_validated"]


def export_rows(store: RecordStore, sessions: Iterable[Session]) -> list[dict[str, Any]]:
    """The records of ``sessions`` as export rows (:data:`EXPORT_COLUMNS`; times in UTC, ISO 8601; a
    reviewer's verdict where there is one): what `edgekit sessions export` and `edgekit serve`'s CSV
    download write."""
    rows = []
    for s in sessions:
        reviews = store.reviews(s.id)
        records = store.records(s.id)
        summary = session_summary(store, s, records)
        result = summary.decision if summary is not None else ""
        guard = summary.domain if summary is not None else None
        validated = "" if not guard or guard.get("ok") is None else ("yes" if guard["ok"] else "no")
        for r in records:
            when = datetime.fromtimestamp(r["created_at"], timezone.utc).isoformat(timespec="seconds")
            v = reviews.get(int(r["id"])) or {}
            rows.append({**r, "patient": s.patient, "site": s.site, "operator": s.operator,
                         "created_at": when, "review": v.get("verdict"), "reviewer": v.get("reviewer"),
                         "session_result": result, "session_validated": validated})
    return rows
