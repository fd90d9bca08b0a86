"""``edgekit serve``. Light at import (click only); FastAPI, uvicorn and the runtime load in the body."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from pathlib import Path

import click

from edgekit.cli_options import allow_unsigned_option, model_option

TOKEN_ENV = "EDGEKIT_SERVE_TOKEN"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def choose_token(host: str, env: dict[str, str] | None = None) -> str | None:
    """The access token: ``$EDGEKIT_SERVE_TOKEN`` when set; a fresh random one beyond loopback;
    None (no token) on loopback."""
    env = os.environ if env is None else env
    given = env.get(TOKEN_ENV, "").strip()
    if given:
        if len(given) < 16:
            from edgekit.errors import EdgekitError

            raise EdgekitError(f"{TOKEN_ENV} is too short to be safe: use at least 16 characters")
        return given
    return None if is_loopback(host) else secrets.token_urlsafe(24)


def _check_port_free(host: str, port: int) -> None:
    from edgekit.errors import EdgekitError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as exc:
            raise EdgekitError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port "
                               "or --host") from exc


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback (e.g. 0.0.0.0 for the clinic's Wi-Fi) "
                   f"requires an access token: a random one printed at start, or ${TOKEN_ENV}.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@model_option()
@click.option("--model-format", default=None, help="Which model of the bundle to run (tflite_int8, ...).")
@click.option("--threads", type=click.IntRange(1, 64), default=None, help="Inference threads.")
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="Screening database, shared with `edgekit screen`. "
                   "Default: $EDGEKIT_DB or ~/.local/share/edgekit/screening.sqlite.")
@click.option("--overlay-dir", type=click.Path(path_type=Path), default=None,
              help="Where annotated field overlays are kept. Default: overlays/ beside the database.")
@click.option("--max-upload-mb", type=click.FloatRange(0.1, 200), default=20.0, show_default=True,
              help="Largest accepted upload.")
@click.option("--max-pending", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Uploads processed or waiting at once; more are refused with 429 (retry).")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="TLS certificate (PEM) for HTTPS; with --key.")
@click.option("--key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="TLS private key (PEM) for HTTPS; with --cert.")
@allow_unsigned_option()
def serve(host: str, port: int, bundle: Path | None, model_format: str | None, threads: int | None,
          db: Path | None, overlay_dir: Path | None, max_upload_mb: float, max_pending: int,
          cert: Path | None, key: Path | None, allow_unsigned: bool) -> None:
    """Serve the screening page and its JSON API to phones on this network.

    A phone opens the printed address, starts a patient session, takes photos of microscope fields
    (or uploads fields and cell crops); each is analysed and recorded here exactly as `edgekit field`
    and `edgekit screen` would. The API is described at /openapi.json. Ctrl-C stops.
    """
    from edgekit.errors import EdgekitError

    if (cert is None) != (key is None):
        raise EdgekitError("HTTPS needs both --cert and --key")
    if cert is not None:
        import ssl

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise EdgekitError(f"cannot use --cert {cert} with --key {key}: {exc}") from exc
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
    token = choose_token(host)
    _check_port_free(host, port)
    untrusted: list[str] = []  # why, when an unsigned bundle runs with --allow-unsigned

    def warn(line: str) -> None:
        untrusted.append(line.removeprefix("warning: "))
        click.echo(line, err=True)

    classifier = load_classifier(bundle, model_format, threads, allow_unsigned=allow_unsigned, warn=warn)
    db_path = (db or default_db_path()).expanduser()
    station = Station(classifier, db_path, overlay_dir or db_path.parent / "overlays",
                      untrusted="; ".join(untrusted) or None)
    config = ServeConfig(token=token, max_bytes=int(max_upload_mb * 1024 * 1024), max_pending=max_pending,
                         secure_cookie=cert is not None, host=host)
    app = create_app(station, config)

    scheme = "https" if cert else "http"
    shown_host = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    if ":" in shown_host:
        shown_host = f"[{shown_host}]"
    url = f"{scheme}://{shown_host}:{port}/"
    click.echo(f"edgekit serve: model {classifier.fmt} ({classifier.model_sha256[:12]}), database {db_path}")
    if token is None:
        click.echo(f"open {url} on this machine (loopback only; --host 0.0.0.0 to serve phones)")
    else:
        click.echo("open this address on the phone (it holds the access token; keep it private):")
        click.echo(f"  {url}?token={token}")
        if host in ("0.0.0.0", "::"):
            click.echo("  (if the phone cannot resolve the name, use this machine's IP address instead)")
    try:
        uvicorn.run(app, host=host.strip("[]"), port=port, access_log=False, log_level="warning",
                    ssl_certfile=str(cert) if cert else None, ssl_keyfile=str(key) if key else None)
    finally:
        station.close()
