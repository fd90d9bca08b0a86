# pyright: basic
"""`edgekit sync` and `edgekit programme migrate/report` (the sync extra: psycopg 3)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import click

from edgekit.cli_options import format_option, require_modules
from edgekit.errors import EdgekitError


def _url(value: str) -> str:
    if not value.startswith(("postgresql://", "postgres://")):
        raise click.BadParameter("must be a postgresql:// URL (postgresql://USER@HOST/DB[?sslmode=...])")
    return value


@click.command("sync")
@click.argument("db", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "url", required=True, envvar="EDGEKIT_PROGRAMME_URL",
              help="postgresql://STATION_ROLE@HOST/DB (TLS: add ?sslmode=verify-full; "
                   "$EDGEKIT_PROGRAMME_URL; passwords from ~/.pgpass or $PGPASSWORD)")
@format_option("text", "json", default="text", old_flags={"--json": "json"},
               help_text='text: one line; json: {"sent": N, "already": M}')
@click.option("--batch", default=5000, show_default=True, help="records per transaction")
@click.option("--full", is_flag=True, help="offer every record again (the server keeps one copy of each)")
def sync(db: Path | None, url: str, out_format: str, batch: int, full: bool) -> None:
    """Send this station's new records to the programme server.

    Send this station's sessions, records, crop references and reviews that the programme server
    does not have yet (safe to interrupt and re-run: each row is stored once). DB: the screening
    database (default: the one `screen` and `serve` record into, $EDGEKIT_DB or
    ~/.local/share/edgekit/screening.sqlite)."""
    require_modules("sync", "sync", "psycopg")
    from edgekit.device.records import default_db_path
    from edgekit.programme.sync import sync as run

    url, as_json = _url(url), out_format == "json"
    result = run(db or default_db_path(), url, batch=batch, full=full,
                 progress=None if as_json else (lambda line: click.echo(line, err=True)))
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        click.echo(f"station {result.station}: {result.sent} sent, {result.already} already on the server")


@click.group("programme")
def programme() -> None:
    """The programme's PostgreSQL: install its schema, report."""


@programme.command("migrate")
@click.option("--to", "url", required=True, envvar="EDGEKIT_PROGRAMME_URL",
              help="postgresql://ADMIN@HOST/DB: a role that may create tables and roles")
def migrate(url: str) -> None:
    """Create or upgrade the programme server's schema and roles.

    Create or upgrade the server schema (numbered SQL files, in order) and the group roles
    edgekit_station and edgekit_reader. A newer server schema is refused untouched."""
    require_modules("programme migrate", "sync", "psycopg")
    from edgekit.programme.server import migrate as run

    out = run(_url(url))
    applied = ", ".join(out["applied"]) or "nothing to apply"
    click.echo(f"programme schema {out['schema']}: {applied}")


@programme.command("report")
@click.option("--from", "url", required=True, envvar="EDGEKIT_PROGRAMME_URL",
              help="postgresql://READER@HOST/DB (a role in edgekit_reader)")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="sessions started on or after this day (UTC), YYYY-MM-DD")
@format_option("json", "csv", "html", default="json")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write here instead of stdout")
def report(url: str, since, out_format: str, out: Path | None) -> None:
    """Per site and week: patients screened, calls, guard and reviews.

    Per site and ISO week: patients screened, positive/negative/refer (Wilson 95% intervals),
    share of fields NOT VALIDATED by the domain guard, reviewer agreement with the model."""
    require_modules("programme report", "sync", "psycopg")
    from edgekit.programme import report as rep

    day: date | None = None if since is None else since.date()
    rows = rep.report(_url(url), day)
    text = {"json": rep.to_json, "csv": rep.to_csv, "html": rep.to_html}[out_format](rows)
    if out is None:
        from edgekit.outputs import write_stdout

        write_stdout(text if text.endswith("\n") else text + "\n")
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise EdgekitError(f"cannot write {out}: {exc.strerror or exc}") from exc
    click.echo(f"wrote {out}", err=True)
