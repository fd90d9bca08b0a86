# pyright: basic
"""``edgekit serve``. Light at import (click only); FastAPI, uvicorn and the runtime load in the body."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import click

from edgekit.cli_options import (
    MAX_THREADS,
    FiniteFloatRange,
    allow_unsigned_option,
    model_format_option,
    model_option,
)
from edgekit.device.serve.access import TOKEN_ENV
from edgekit.device.serve.join import join_links, lan_addresses, qr_text, url_host


def station_links(scheme: str, host: str, port: int, token: str | None) -> list[str]:
    """The join links on this network (by IP address: phones often cannot resolve the station's
    name); the machine's name when no address is found (said on stderr); none without a token."""
    if token is None:
        return []
    addresses = lan_addresses(host)
    if not addresses:
        click.echo("no network address found: is this machine on the clinic's Wi-Fi? The page is at "
                   f"{scheme}://{url_host(socket.gethostname())}:{port}/?token=...", err=True)
        addresses = [socket.gethostname()]
    return join_links(scheme, addresses, port, token)


def _print_join(scheme: str, host: str, port: int, token: str, links: list[str] | None = None) -> None:
    """The join links and the first one's QR code; where the station's own screen shows them."""
    links = links or station_links(scheme, host, port, token)
    click.echo("join from a phone on this network: scan the code or open the address "
               "(it holds the access token; keep it private)")
    qr = qr_text(links[0])
    click.echo(qr if qr else "  (no QR code: pip install segno, or edgekit[serve], to show one)")
    for link in links:
        click.echo(f"  {link}")
    click.echo("on this machine, the same link with /station in place of / shows the QR code on screen "
               "(phones see only the sessions they started; this machine sees all)")


def auto_tls(db_path: Path, host: str) -> tuple[Path, Path, bytes]:
    """``--tls auto``: the station's certificate from its own CA (both made when needed); its files and
    the CA certificate (DER) that phones install."""
    from edgekit.device.serve.tls import ensure_station_tls

    tls, made = ensure_station_tls(db_path, lan_addresses(host))
    if "CA" in made:
        click.echo(f"made this station's own CA in {tls.folder} (keep the folder: phones trust this CA)")
    elif made:
        click.echo("made a new station certificate for this network's addresses (same CA: phones trust it)")
    click.echo(f"HTTPS with this station's CA, SHA-256 {tls.ca_fingerprint()}: install it once on each phone "
               "(the station screen, /station on this machine, shows how)")
    return tls.cert, tls.key, tls.ca_der()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback (e.g. 0.0.0.0 for the clinic's Wi-Fi) "
                   "requires an access token: a random one kept beside the database (phones stay joined "
                   f"across restarts), or ${TOKEN_ENV}.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@model_option()
@model_format_option()
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None, help="Inference threads.")
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="Screening database, shared with `edgekit screen`. "
                   "Default: $EDGEKIT_DB or ~/.local/share/edgekit/screening.sqlite.")
@click.option("--overlay-dir", type=click.Path(path_type=Path), default=None,
              help="Where annotated field overlays are kept. Default: overlays/ beside the database.")
@click.option("--max-upload-mb", type=FiniteFloatRange(0.1, 200), default=20.0, show_default=True,
              help="Largest accepted upload.")
@click.option("--max-pending", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Uploads processed or waiting at once; more are refused with 429 (retry).")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="TLS certificate (PEM) for HTTPS; with --key.")
@click.option("--key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="TLS private key (PEM) for HTTPS; with --cert.")
@click.option("--tls", type=click.Choice(["auto"]), default=None,
              help="auto: HTTPS with a certificate from this station's own small CA, made once and kept "
                   "beside the database (owner-only) for the addresses phones open; each phone installs "
                   "the CA once (the station screen, /station, shows how). Not with --cert/--key.")
@click.option("--new-token", is_flag=True,
              help="Replace the kept access token with a new one: every phone must join again.")
@allow_unsigned_option()
def serve(host: str, port: int, bundle: Path | None, model_format: str | None, threads: int | None,
          db: Path | None, overlay_dir: Path | None, max_upload_mb: float, max_pending: int,
          cert: Path | None, key: Path | None, tls: str | None, new_token: bool,
          allow_unsigned: bool) -> None:
    """Serve the screening page (and its JSON API) to phones.

    A phone opens the printed address, starts a patient session, takes photos of microscope fields
    (or uploads fields and cell crops); each is analysed and recorded here exactly as `edgekit field`
    and `edgekit screen` would. The API is described at /openapi.json. Ctrl-C stops.
    """
    from edgekit.device.serve.access import check_port_free, check_tls, choose_token, token_path
    from edgekit.errors import EdgekitError

    if tls and (cert or key):
        raise EdgekitError("--tls auto makes the station's own certificate: leave out --cert and --key")
    check_tls(cert, key)
    try:
        import uvicorn

        from edgekit.device.serve.app import ServeConfig, create_app
    except ImportError as exc:
        raise EdgekitError(f"edgekit serve needs the serve extra ({exc.name} is missing): "
                           "pip install 'edgekit[serve]'") from exc
    from edgekit.device.records import default_db_path
    from edgekit.device.runtime import load_classifier
    from edgekit.device.serve.station import Station

    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    db_path = (db or default_db_path()).expanduser()
    token = choose_token(host, saved=token_path(db_path), rotate=new_token)
    check_port_free(host, port)
    ca_der = None
    if tls == "auto":
        cert, key, ca_der = auto_tls(db_path, host)
        check_tls(cert, key)
    untrusted: list[str] = []  # why, when an unsigned bundle runs with --allow-unsigned

    def warn(line: str) -> None:
        untrusted.append(line.removeprefix("warning: "))
        click.echo(line, err=True)

    classifier = load_classifier(bundle, model_format, threads, allow_unsigned=allow_unsigned, warn=warn)
    classifier.manifest.decision.check_decides_patients()
    from edgekit.device.sizes import unrecorded_note

    if note := unrecorded_note(classifier.manifest):  # uploads are gated: said once, here
        click.echo(note, err=True)
    overlays = overlay_dir or db_path.parent / "overlays"
    try:  # a file or an unwritable folder is said now, not as "counted, no overlay" on every field
        overlays.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgekitError(f"cannot keep overlays in {overlays}: {exc.strerror or exc}") from exc
    if not os.access(overlays, os.W_OK | os.X_OK):
        raise EdgekitError(f"cannot keep overlays in {overlays}: the folder is not writable")
    station = Station(classifier, db_path, overlays, untrusted="; ".join(untrusted) or None)
    scheme = "https" if cert else "http"
    links = station_links(scheme, host, port, token)
    config = ServeConfig(token=token, max_bytes=int(max_upload_mb * 1024 * 1024), max_pending=max_pending,
                         secure_cookie=cert is not None, host=host, join_links=tuple(links),
                         ca_certificate=ca_der)
    app = create_app(station, config)

    click.echo(f"edgekit serve: model {classifier.fmt} ({classifier.model_sha256[:12]}), database {db_path}")
    if token is None:
        click.echo(f"open {scheme}://{url_host(host)}:{port}/ on this machine "
                   "(loopback only; --host 0.0.0.0 to serve phones)")
    else:
        _print_join(scheme, host, port, token, links)
    try:
        uvicorn.run(app, host=host.strip("[]"), port=port, access_log=False, log_level="warning",
                    ssl_certfile=str(cert) if cert else None, ssl_keyfile=str(key) if key else None)
    finally:
        station.close()
