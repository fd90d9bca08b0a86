# pyright: basic
"""`edgekit programme report`: per site and ISO week, from the programme server (a reader role).

Every number is decided the way the station decides it, from what is stored with each session (its
Decision and domain guard), never from a bundle: patients screened (distinct patient ids of the site
in that week; a patient screened twice counts once, with their latest session's decision),
positive / negative / refer with Wilson 95% intervals, the share of whole fields the domain guard
does NOT VALIDATE (field by field, as `sessions show` says it; a session stored without its guard
is vouched for by nothing, so its fields count as not validated), and how often a reviewer agreed
with the model's call on the cells they checked.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Iterable
from datetime import date, datetime, timezone
from typing import Any

from edgekit.device.drift import field_guard
from edgekit.device.records import Session
from edgekit.device.review import model_call
from edgekit.device.screening import summarize
from edgekit.metrics import wilson_interval
from edgekit.programme.server import check_schema, connect, server_errors

NO_SITE = "(no site)"
CALLS = ("positive", "negative", "refer")
_SESSION_FIELDS = ("patient", "site", "operator", "model_sha256", "model_format", "bundle", "created_at",
                   "updated_at", "decision", "manifest_sha256", "signer_key_id", "trust", "guard")


def iso_week(ts: float) -> str:
    y, w, _ = datetime.fromtimestamp(ts, timezone.utc).isocalendar()
    return f"{y}-W{w:02d}"


class _Cell:
    """One site and week being counted."""

    def __init__(self) -> None:
        self.patients: dict[str, tuple[float, str | None]] = {}  # patient -> (updated_at, call)
        self.stations: set[str] = set()
        self.sessions = self.sessions_nv = 0
        self.fields = self.fields_nv = 0
        self.reviewed = self.agreed = 0

    def row(self, site: str, week: str) -> dict[str, Any]:
        calls = [c for _, c in self.patients.values()]
        decided = sum(c is not None for c in calls)
        out: dict[str, Any] = {"site": site, "week": week, "stations": len(self.stations),
                               "sessions": self.sessions, "patients": len(self.patients), "decided": decided}
        for c in CALLS:
            k = calls.count(c)
            out[c] = k
            out[f"{c}_ci95"] = list(wilson_interval(k, decided))
        out["fields"] = self.fields
        out["fields_not_validated"] = self.fields_nv
        out["not_validated_share"] = self.fields_nv / self.fields if self.fields else None
        out["not_validated_ci95"] = list(wilson_interval(self.fields_nv, self.fields))
        out["sessions_not_validated"] = self.sessions_nv
        out["reviewed_cells"] = self.reviewed
        out["agreement"] = self.agreed / self.reviewed if self.reviewed else None
        out["agreement_ci95"] = list(wilson_interval(self.agreed, self.reviewed))
        return out


def _session(row: dict[str, Any]) -> Session:
    return Session(id=int(row["local_id"]), **{k: row[k] for k in _SESSION_FIELDS})


def _count(cell: _Cell, session: Session, records: list[dict[str, Any]],
           reviews: dict[int, str]) -> None:
    decision = session.decided_with
    domain = session.guarded_with if session.guard_stored else None
    cell.sessions += 1
    call = None
    if decision is not None:
        summary = summarize(session.patient, records, decision,
                            domain=session.guarded_with if session.guard_stored else False)
        call = summary.decision
        if not summary.validated or not session.guard_stored:
            cell.sessions_nv += 1
    elif not session.guard_stored:
        cell.sessions_nv += 1
    prev = cell.patients.get(session.patient)
    if prev is None or session.updated_at >= prev[0]:
        cell.patients[session.patient] = (session.updated_at, call)
    fields = field_guard(records, domain)
    cell.fields += len(fields)
    cell.fields_nv += sum(not f["ok"] for f in fields)
    cutoff = None if decision is None else decision.cutoff
    for r in records:
        verdict = reviews.get(int(r["id"]))
        if verdict is not None and r["status"] == "classified":
            cell.reviewed += 1
            cell.agreed += model_call(r, cutoff) == (verdict == "parasitized")


def report(url: str, since: date | None = None) -> list[dict[str, Any]]:
    """One row per site and ISO week (of each session's start, UTC), sites A-Z, weeks in order."""
    start = 0.0 if since is None else datetime(since.year, since.month, since.day,
                                               tzinfo=timezone.utc).timestamp()
    conn = connect(url)
    cells: dict[tuple[str, str], _Cell] = {}
    try:
        with server_errors(url):
            check_schema(conn, url)
            with conn.cursor() as cur:
                cur.execute(f"SELECT station_id::text, local_id, {', '.join(_SESSION_FIELDS)} FROM sessions"
                            " WHERE created_at >= %s", (start,))
                assert cur.description is not None
                names = [d.name for d in cur.description]
                sessions = {(r[0], r[1]): dict(zip(names, r, strict=True)) for r in cur.fetchall()}
                cur.execute("SELECT v.station_id::text, v.record_id, v.verdict FROM reviews v JOIN sessions s"
                            " ON s.station_id = v.station_id JOIN records r ON r.station_id = v.station_id"
                            " AND r.local_id = v.record_id AND r.session_id = s.local_id"
                            " WHERE s.created_at >= %s", (start,))
                reviews: dict[str, dict[int, str]] = {}
                for st, rid, verdict in cur.fetchall():
                    reviews.setdefault(st, {})[int(rid)] = verdict
            # records stream session by session (memory: one session's records)
            with conn.cursor(name="edgekit_report_records") as cur:
                cur.itersize = 20000
                cur.execute("SELECT r.station_id::text, r.session_id, r.local_id, r.source_id, r.status,"
                            " r.p_positive, r.decision, r.domain_score FROM records r JOIN sessions s"
                            " ON s.station_id = r.station_id AND s.local_id = r.session_id"
                            " WHERE s.created_at >= %s ORDER BY r.station_id, r.session_id, r.local_id",
                            (start,))
                for key, records in _grouped(cur):
                    row = sessions.pop(key, None)
                    if row is not None:
                        _add(cells, key[0], row, records, reviews.get(key[0], {}))
            for key, row in sessions.items():  # sessions without records
                _add(cells, key[0], row, [], {})
            conn.rollback()
    finally:
        conn.close()
    return [cells[k].row(*k) for k in sorted(cells)]


def _grouped(rows: Iterable[tuple]) -> Iterable[tuple[tuple[str, int], list[dict[str, Any]]]]:
    key: tuple[str, int] | None = None
    batch: list[dict[str, Any]] = []
    for st, sess, rid, source_id, status, p, decision, score in rows:
        if (st, sess) != key:
            if key is not None:
                yield key, batch
            key, batch = (st, sess), []
        batch.append({"id": rid, "source_id": source_id, "status": status, "p_positive": p,
                      "decision": decision, "domain_score": score})
    if key is not None:
        yield key, batch


def _add(cells: dict[tuple[str, str], _Cell], station: str, row: dict[str, Any],
         records: list[dict[str, Any]], reviews: dict[int, str]) -> None:
    session = _session(row)
    cell = cells.setdefault((session.site or NO_SITE, iso_week(session.created_at)), _Cell())
    cell.stations.add(station)
    _count(cell, session, records, reviews)


# ---------------------------------------------------------------------------------------- output

CSV_COLUMNS = ["site", "week", "stations", "sessions", "patients", "decided",
               "positive", "positive_lo", "positive_hi", "negative", "negative_lo", "negative_hi",
               "refer", "refer_lo", "refer_hi", "fields", "fields_not_validated", "not_validated_share",
               "not_validated_lo", "not_validated_hi", "sessions_not_validated", "reviewed_cells",
               "agreement", "agreement_lo", "agreement_hi"]


def to_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps({"rows": rows}, indent=1)


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        flat = dict(r)
        for k in ("positive", "negative", "refer", "not_validated", "agreement"):
            lo, hi = r[f"{k}_ci95"]
            flat[f"{k}_lo"], flat[f"{k}_hi"] = round(lo, 4), round(hi, 4)
        # site names come from stations: never let a spreadsheet run them as formulas
        flat["site"] = "'" + r["site"] if r["site"][:1] in ("=", "+", "-", "@", "\t", "\r") else r["site"]
        w.writerow(flat)
    return buf.getvalue()


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _bar(share: float | None, lo: float, hi: float, colour: str, n: int) -> str:
    """An inline SVG bar with its 95% interval as a whisker (200 px = 100%)."""
    if not n or share is None:
        return '<svg width="210" height="16"></svg>'
    w, a, b = 200 * share, 200 * lo, 200 * hi
    return (f'<svg width="210" height="16" role="img" aria-label="{_pct(share)}">'
            f'<rect x="0" y="2" width="200" height="12" fill="#eee"/>'
            f'<rect x="0" y="2" width="{w:.1f}" height="12" fill="{colour}"/>'
            f'<line x1="{a:.1f}" x2="{b:.1f}" y1="8" y2="8" stroke="#000" stroke-width="1.5"/>'
            f'<line x1="{a:.1f}" x2="{a:.1f}" y1="4" y2="12" stroke="#000"/>'
            f'<line x1="{b:.1f}" x2="{b:.1f}" y1="4" y2="12" stroke="#000"/></svg>')


def to_html(rows: list[dict[str, Any]], title: str = "Screening programme") -> str:
    """One self-contained page: per site a table of weeks with bars (no scripts, no downloads)."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
             "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:2em}"
             "td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}"
             "th{background:#f4f4f4}td.l,th.l{text-align:left}.warn{color:#b00;font-weight:bold}"
             "</style></head><body>", f"<h1>{e(title)}</h1>",
             "<p>Per site and ISO week. Bars: share of decided patients called positive (red), share of "
             "whole fields the domain guard does <b>NOT VALIDATE</b> (orange: results there are not "
             "validated for that microscope; the site needs adaptation); whiskers: Wilson 95% "
             "intervals.</p>"]
    if not rows:
        parts.append("<p>No sessions on the server for this period.</p>")
    for site in sorted({r["site"] for r in rows}):
        mine = [r for r in rows if r["site"] == site]
        fields = sum(r["fields"] for r in mine)
        nv = sum(r["fields_not_validated"] for r in mine)
        flag = (f" <span class='warn'>{nv} of {fields} fields NOT VALIDATED</span>"
                if fields and nv / fields >= 0.2 else "")
        parts.append(f"<h2>{e(site)}{flag}</h2><table><tr><th class='l'>week</th><th>patients</th>"
                     "<th>positive</th><th>negative</th><th>refer</th><th class='l'>positivity</th>"
                     "<th>fields</th><th class='l'>NOT VALIDATED</th><th>reviewer agreement</th></tr>")
        for r in mine:
            def cnt(c: str, r: dict[str, Any] = r) -> str:
                lo, hi = r[f"{c}_ci95"]
                share = r[c] / r["decided"] if r["decided"] else None
                return f"{r[c]} ({_pct(share)}, {_pct(lo)}–{_pct(hi)})"
            pos = r["positive"] / r["decided"] if r["decided"] else None
            agree = (f"{_pct(r['agreement'])} of {r['reviewed_cells']}"
                     f" ({_pct(r['agreement_ci95'][0])}–{_pct(r['agreement_ci95'][1])})"
                     if r["reviewed_cells"] else "–")
            pos_lo, pos_hi = r["positive_ci95"]
            nv_lo, nv_hi = r["not_validated_ci95"]
            parts.append(
                f"<tr><td class='l'>{e(r['week'])}</td><td>{r['patients']}</td><td>{cnt('positive')}</td>"
                f"<td>{cnt('negative')}</td><td>{cnt('refer')}</td>"
                f"<td class='l'>{_bar(pos, pos_lo, pos_hi, '#c0392b', r['decided'])}</td>"
                f"<td>{r['fields']}</td><td class='l'>"
                f"{_bar(r['not_validated_share'], nv_lo, nv_hi, '#e67e22', r['fields'])}"
                f" {_pct(r['not_validated_share'])}</td><td>{agree}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
