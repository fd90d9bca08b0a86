# pyright: basic
"""``edgekit sessions review`` and ``edgekit sessions confirm``: a reviewer checks the cells the model
called parasitized or uncertain. Light at import (click only)."""

from __future__ import annotations

import csv
from pathlib import Path

import click

_db_option = click.option(
    "--db", type=click.Path(path_type=Path), default=None,
    help="Screening database (default: $EDGEKIT_DB or ~/.local/share/edgekit/screening.sqlite).",
)
VERDICT_WORDS = {"parasitized": "parasitized", "not parasitized": "not parasitized", "yes": "parasitized",
                 "no": "not parasitized", "confirm": "confirm", "overrule": "overrule"}


def _open(db: Path | None):
    from edgekit.device.records import RecordsError, RecordStore, default_db_path

    path = db or default_db_path()
    if not path.is_file():
        raise RecordsError(f"no screening database at {path}")
    return RecordStore(path)


def session_cutoff(session) -> float | None:
    """The cell cutoff the session is decided with (:func:`edgekit.device.review.session_cutoff`)."""
    from edgekit.device.review import session_cutoff as cutoff

    return cutoff(session)


def review_text(store, session) -> list[str]:
    """Per-field parasitemia, model count and confirmed count lines of one session."""
    from edgekit.device.review import session_review, summary_lines

    return summary_lines(*session_review(store, session))


@click.command("review")
@click.argument("session_id")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True,
              help="FILE.html (self-contained page) or FILE.png (contact sheet).")
@click.option("--all", "everything", is_flag=True, help="Every classified cell, not only the flagged ones.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it is an existing regular file.")
@_db_option
def review(session_id: str, out: Path, everything: bool, force: bool, db: Path | None) -> None:
    """A gallery of every cell the model called parasitized or uncertain in a session, most
    suspicious first, to confirm at a glance (then `edgekit sessions confirm`)."""
    from edgekit.device.review import contact_sheet, gallery_items, html_page
    from edgekit.errors import EdgekitError
    from edgekit.manifest import atomic_write_bytes, atomic_write_text
    from edgekit.safefile import check_output_target

    suffix = out.suffix.lower()
    if suffix not in (".html", ".htm", ".png"):
        raise EdgekitError(f"--out must end in .html or .png, not {out.name!r}")
    check_output_target(out, force)  # never a symlink, FIFO or device; no overwrite without --force
    with _open(db) as store:
        session = store.find_session(session_id)
        items = gallery_items(store, session, session_cutoff(session), everything)
        lines = review_text(store, session)
    title = f"session {session.id}, patient {session.patient}: {len(items)} cells to review"
    hint = (f"edgekit sessions confirm {session.id} ID... --verdict parasitized|not-parasitized "
            f"(or --csv FILE with columns record_id,verdict)")
    if suffix == ".png":
        atomic_write_bytes(out, contact_sheet(items, title))
    else:
        atomic_write_text(out, html_page(items, title, lines, hint))
    missing = sum(it["png"] is None for it in items)
    note = f" ({missing} without a kept crop: screened before crops were kept)" if missing else ""
    click.echo(f"wrote {out}: {len(items)} cells{note}")


MAX_CSV_BYTES = 16 << 20  # a verdict file of ~500,000 rows


def _read_csv(path: Path) -> list[tuple[int, str]]:
    from edgekit.errors import EdgekitError
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
    return out


@click.command("confirm")
@click.argument("session_id")
@click.argument("record_ids", nargs=-1, type=int)
@click.option("--verdict", type=click.Choice(["parasitized", "not-parasitized", "confirm", "overrule"]),
              help="For RECORD_IDS: the reviewer's call, or confirm/overrule the model's call at the cutoff.")
@click.option("--csv", "csv_file", type=click.Path(path_type=Path),
              help="CSV with columns record_id,verdict (parasitized, not parasitized, confirm, overrule).")
@click.option("--reviewer", default=None, help="Who reviewed.")
@click.option("--note", default=None, help="A note stored with each verdict.")
@_db_option
def confirm(session_id: str, record_ids: tuple[int, ...], verdict: str | None, csv_file: Path | None,
            reviewer: str | None, note: str | None, db: Path | None) -> None:
    """Record a reviewer's verdict on cells of a session (ids from `sessions review`); the session
    summary then shows the model's count and the confirmed count."""
    from edgekit.device.review import record_verdicts
    from edgekit.errors import EdgekitError

    if bool(record_ids) == bool(csv_file):
        raise EdgekitError("give RECORD_IDS with --verdict, or --csv FILE")
    if record_ids and not verdict:
        raise EdgekitError("give --verdict for RECORD_IDS")
    pairs = ([(r, verdict.replace("-", " ")) for r in record_ids] if record_ids  # type: ignore[union-attr]
             else _read_csv(csv_file))  # type: ignore[arg-type]
    with _open(db) as store:
        session = store.find_session(session_id)
        tally = record_verdicts(store, session, pairs, reviewer, note)
        lines = review_text(store, session)
    click.echo(f"recorded {len(pairs)} verdict(s) in session {session.id} ({tally['new']} new, "
               f"{tally['changed']} changed, {tally['unchanged']} unchanged)")
    for line in lines[-2:]:
        click.echo(line)
