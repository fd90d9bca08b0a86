# pyright: basic
"""The drift view: do a site's recent sessions still look like the cells its bundle was fitted on?

A model adapted once keeps screening for months while stain batches, lamps and cameras change. Each
screening session already has the domain guard's score (the median distance of its cells from the
bundle's training cells, :func:`edgekit.device.domain.session_verdict`). This module lines up the
sessions of one site screened with one model (site + model sha256) in the order they started and
gives each a **rolling score**: the median score of it and the ``window - 1`` scored sessions before
it. A single odd slide moves the median little; a stain batch that changed moves it within a few
sessions, before the per-session verdicts all turn. Status of the rolling score:

- ``drift``: above the bundle's ``domain.session_threshold``: the site's recent sessions no longer look
  like the cells the bundle vouches for: re-validate the site (``edgekit site check``);
- ``watch``: above ``domain.session_warn`` (the highest session score seen when the guard was fitted,
  recorded by site bundles): beyond anything validated, not yet over the threshold;
- ``ok``: neither; ``unknown``: the bundle has no guard statistics, or no session was scored yet.

Light: the standard library and numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from edgekit.device.order import median

if TYPE_CHECKING:
    from edgekit.device.records import Session
    from edgekit.manifest import Domain

WINDOW = 5  # sessions in the rolling median
STATUSES = ("ok", "watch", "drift", "unknown")
REVALIDATE = "re-validate this site (`edgekit site check BUNDLE --dataset NEW_LABELLED_CELLS`)"


@dataclass
class SessionPoint:
    """One session's guard score with what it is compared against (the bundle it was screened with)."""

    session_id: int
    site: str | None
    model_sha256: str
    started: float  # seconds since the epoch
    score: float | None  # the session's guard score; None: not scored (no guard, too few cells)
    threshold: float | None = None  # domain.session_threshold; None: the bundle has no guard statistics
    warn: float | None = None  # domain.session_warn


@dataclass
class Drift:
    """A session's place in its site's rolling view."""

    status: str  # one of STATUSES
    rolling: float | None  # median score of this and the window-1 scored sessions before it
    threshold: float | None
    warn: float | None
    sessions: int  # scored sessions in the window

    @property
    def ratio(self) -> float | None:
        """The rolling score as a fraction of the threshold (1.0: the limit)."""
        return None if self.rolling is None or not self.threshold else self.rolling / self.threshold

    def short(self) -> str:
        """``0.42 ok`` / ``1.30 DRIFT`` / ``-``: the rolling score over the threshold and the status."""
        if self.status == "unknown" or self.ratio is None:
            return "-"
        word = {"drift": "DRIFT", "watch": "watch"}.get(self.status, "ok")
        return f"{self.ratio:.2f} {word}"


@dataclass
class SiteDrift:
    """The latest rolling view of one site and model."""

    site: str | None
    model_sha256: str
    drift: Drift
    sessions: int  # sessions of this site and model, scored or not
    last_started: float
    recent_scores: list[float] = field(default_factory=list)  # the window's scores, oldest first

    def line(self) -> str:
        """One sentence for a supervisor."""
        d = self.drift
        who = f"site {self.site or '-'} (model {self.model_sha256[:12]})"
        if d.status == "unknown":
            return (f"{who}: drift not known: the bundle has no guard statistics or no session was scored"
                    if d.threshold is None or d.rolling is None else f"{who}: drift not known")
        over = f"guard score {d.rolling:.2f} over the last {d.sessions} session(s)"
        limits = f"drift above {d.threshold:.2f}" + (f", watch above {d.warn:.2f}" if d.warn else "")
        if d.status == "drift":
            return (f"{who}: DRIFT: recent sessions no longer look like the cells this bundle was fitted on "
                    f"({over}; {limits}): {REVALIDATE}")
        if d.status == "watch":
            return (f"{who}: watch: recent sessions are farther from the bundle's cells than any it was "
                    f"validated on ({over}; {limits}); re-validate soon")
        return f"{who}: ok ({over}; {limits})"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drift": {**asdict(self.drift), "ratio": self.drift.ratio},
                "line": self.line()}


def status_of(rolling: float | None, threshold: float | None, warn: float | None) -> str:
    """``drift`` / ``watch`` / ``ok`` / ``unknown`` for a rolling score."""
    if rolling is None or threshold is None:
        return "unknown"
    if rolling > threshold:
        return "drift"
    if warn is not None and rolling > warn:
        return "watch"
    return "ok"


def point(session_id: int, site: str | None, model_sha256: str, started: float,
          verdict: Mapping[str, Any] | None, domain: Domain | None) -> SessionPoint:
    """A session's point from its guard verdict (``summary.domain``) and its bundle's domain."""
    score = None if verdict is None else verdict.get("score")
    return SessionPoint(session_id, site, model_sha256, float(started),
                        None if score is None or domain is None else float(score),
                        None if domain is None else domain.session_threshold,
                        None if domain is None else domain.session_warn)


def rolling_view(points: Iterable[SessionPoint], window: int = WINDOW
                 ) -> tuple[dict[int, Drift], list[SiteDrift]]:
    """Each session's :class:`Drift` (by session id) and each site + model's latest view (the sites
    in drift first, then watch, ok, unknown; most recent first within each)."""
    if window < 1:
        raise ValueError("the drift window must be at least 1 session")
    groups: dict[tuple[str | None, str], list[SessionPoint]] = {}
    for p in points:
        groups.setdefault((p.site, p.model_sha256), []).append(p)
    per_session: dict[int, Drift] = {}
    sites: list[SiteDrift] = []
    for (site, sha), pts in groups.items():
        pts.sort(key=lambda p: (p.started, p.session_id))
        scored: list[float] = []
        latest = Drift("unknown", None, None, None, 0)
        for p in pts:
            if p.score is not None and p.threshold is not None:
                scored.append(p.score)
            recent = scored[-window:]
            rolling = float(median(recent)) if recent and p.threshold is not None else None
            latest = Drift(status_of(rolling, p.threshold, p.warn), rolling, p.threshold, p.warn, len(recent))
            per_session[p.session_id] = latest
        sites.append(SiteDrift(site, sha, latest, len(pts), pts[-1].started, [round(s, 3) for s in
                                                                             scored[-window:]]))
    rank = {"drift": 0, "watch": 1, "ok": 2, "unknown": 3}
    sites.sort(key=lambda s: (rank[s.drift.status], -s.last_started))
    return per_session, sites


def field_guard(records: Iterable[Mapping[str, Any]], domain: Domain | None) -> list[dict[str, Any]]:
    """Within a session: the guard's verdict on each field (cells cut from whole fields, source ids
    ``field.jpg#12``), in the order the fields were recorded, so a stain or lamp change in the middle
    of a session shows where it began. Empty when the session holds no fields."""
    from edgekit.device.domain import field_verdict

    by_field: dict[str, list[float | None]] = {}
    for r in records:
        if r.get("status") != "failed" and "#" in str(r.get("source_id", "")):
            by_field.setdefault(str(r["source_id"]).rsplit("#", 1)[0], []).append(r.get("domain_score"))
    return [{"field": name, "cells": len(scores), **field_verdict(scores, domain)}
            for name, scores in by_field.items()]


def field_guard_line(fields: list[dict[str, Any]]) -> str | None:
    """``guard by field: 6 of 8 fields vouched for; first not: f7.jpg (5.20)`` (None without fields)."""
    if not fields:
        return None
    bad = [f for f in fields if not f["ok"]]
    line = f"guard by field: {len(fields) - len(bad)} of {len(fields)} fields vouched for"
    if bad:
        first = bad[0]
        score = "" if first["score"] is None else f" ({first['score']:.2f})"
        line += f"; not: {', '.join(f['field'] for f in bad[:5])}{' …' if len(bad) > 5 else ''}"
        line += f"; first at field {fields.index(first) + 1} of {len(fields)}: {first['field']}{score}"
    return line


def session_points(sessions: Iterable[tuple[Session, Any]]) -> list[SessionPoint]:
    """The drift view's :class:`~edgekit.device.drift.SessionPoint` of each (session, summary): its
    guard score and the guard thresholds stored with the session (never re-read from the bundle)."""
    return [point(s.id, s.site, s.model_sha256, s.created_at, None if summary is None else summary.domain,
                  s.guarded_with) for s, summary in sessions]
