# pyright: basic
"""``edgekit sessions review`` and ``edgekit sessions confirm``: a reviewer checks the cells the model
called parasitized or uncertain. Light at import (click only)."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli_options import option

_db_option = click.option(
    "--db", type=click.Path(path_type=Path), default=None,
    help="Screening database (default: $EDGEKIT_DB or ~/.local/share/edgekit/screening.sqlite).",
)


def _open(db: Path | None):
    from edgekit.device.records import RecordStore, default_db_path

    return RecordStore(db or default_db_path(), create=False)


@click.command("review")
@click.argument("session_id")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True,
              help="FILE.html (self-contained page) or FILE.png (contact sheet).")
@click.option("--all", "everything", is_flag=True, help="Every classified cell, not only the flagged ones.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it is an existing regular file.")
@_db_option
def review(session_id: str, out: Path, everything: bool, force: bool, db: Path | None) -> None:
    """A gallery of a session's suspicious cells, to confirm by eye.

    Every cell the model called parasitized or uncertain in a session (flagged), most suspicious
    first, then the sample of cells it called negative whose crops screening kept (one in 20), so
    verdicts label both sides (then `edgekit sessions confirm`)."""
    from edgekit.device.review import contact_sheet, flagged, gallery_items, html_page, session_cutoff
    from edgekit.device.sessions import read_session
    from edgekit.errors import EdgekitError
    from edgekit.manifest import atomic_write_bytes, atomic_write_text
    from edgekit.safefile import check_output_target

    suffix = out.suffix.lower()
    if suffix not in (".html", ".htm", ".png"):
        raise EdgekitError(f"--out must end in .html or .png, not {out.name!r}")
    check_output_target(out, force)  # never a symlink, FIFO or device; no overwrite without --force
    with _open(db) as store:
        session = store.find_session(session_id)
        cutoff = session_cutoff(session)
        items = gallery_items(store, session, cutoff, everything)
        lines = read_session(store, session).review_lines()
    n_flagged = sum(flagged(it["p"], it["decision"], cutoff) for it in items)
    n_sampled = sum(bool(it["negative_sample"]) for it in items)
    others = len(items) - n_flagged - n_sampled  # --all: the other negatives
    counts = f"{n_flagged} flagged, {n_sampled} sampled negative{'s' * (n_sampled != 1)}" + (
        f", {others} other negative{'s' * (others != 1)}" if others else "")
    title = f"session {session.id}, patient {session.patient}: {len(items)} cells to review ({counts})"
    hint = (f"edgekit sessions confirm {session.id} ID... --verdict parasitized|not-parasitized "
            f"(or --verdicts FILE.csv with columns record_id,verdict)")
    if suffix == ".png":
        atomic_write_bytes(out, contact_sheet(items, title))
    else:
        atomic_write_text(out, html_page(items, title, lines, hint))
    missing = sum(it["png"] is None for it in items)
    note = f" ({missing} without a kept crop: screened before crops were kept)" if missing else ""
    click.echo(f"wrote {out}: {len(items)} cells ({counts}){note}")


@click.command("confirm")
@click.argument("session_id")
@click.argument("record_ids", nargs=-1, type=int)
@click.option("--verdict", type=click.Choice(["parasitized", "not-parasitized", "confirm", "overrule"]),
              help="For RECORD_IDS: the reviewer's call, or confirm/overrule the model's call at the cutoff.")
@option("--verdicts", "csv_file", aliases=("--csv",), type=click.Path(path_type=Path),
        help="CSV file with columns record_id,verdict (parasitized, not parasitized, confirm, overrule).")
@click.option("--reviewer", default=None, help="Who reviewed.")
@click.option("--note", default=None, help="A note stored with each verdict.")
@_db_option
def confirm(session_id: str, record_ids: tuple[int, ...], verdict: str | None, csv_file: Path | None,
            reviewer: str | None, note: str | None, db: Path | None) -> None:
    """Record a reviewer's verdict on cells of a session.

    Cells are named by their ids from `sessions review`; the session summary then shows the model's
    count and the confirmed count."""
    from edgekit.device.review import read_verdicts, record_verdicts
    from edgekit.device.sessions import read_session
    from edgekit.errors import EdgekitError

    if bool(record_ids) == bool(csv_file):
        raise EdgekitError("give RECORD_IDS with --verdict, or --verdicts FILE.csv")
    if record_ids and not verdict:
        raise EdgekitError("give --verdict for RECORD_IDS")
    pairs = ([(r, verdict.replace("-", " ")) for r in record_ids] if record_ids  # type: ignore[union-attr]
             else read_verdicts(csv_file))  # type: ignore[arg-type]
    with _open(db) as store:
        session = store.find_session(session_id)
        tally = record_verdicts(store, session, pairs, reviewer, note)
        lines = read_session(store, session).review_lines()
    click.echo(f"recorded {len(pairs)} verdict(s) in session {session.id} ({tally['new']} new, "
               f"{tally['changed']} changed, {tally['unchanged']} unchanged)")
    for line in lines[-2:]:
        click.echo(line)
