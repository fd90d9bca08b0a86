"""``edgekit serve``. Light at import (click only); FastAPI, uvicorn and the runtime load in the body."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

import click

from edgekit.cli_options import allow_unsigned_option, model_option
from edgekit.device.serve.join import is_loopback, join_links, lan_addresses, qr_text, url_host

TOKEN_ENV = "EDGEKIT_SERVE_TOKEN"
TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def choose_token(host: str, env: dict[str, str] | None = None, saved: Path | None = None,
                 rotate: bool = False) -> str | None:
    """The access token: ``$EDGEKIT_SERVE_TOKEN`` when set; None (no token) on loopback; else the one
    kept in ``saved`` (so phones stay joined across restarts), made and kept there on first use or
    when ``rotate``; a fresh random one each start when there is no ``saved``."""
    from edgekit.errors import EdgekitError

    env = os.environ if env is None else env
    given = env.get(TOKEN_ENV, "").strip()
    if given:
        if rotate:
            raise EdgekitError(f"--new-token replaces the kept token, but ${TOKEN_ENV} is set and wins: "
                               "change or unset it instead")
        if len(given) < 16:
            raise EdgekitError(f"{TOKEN_ENV} is too short to be safe: use at least 16 characters")
        return given
    if is_loopback(host):
        if rotate:
            raise EdgekitError("--new-token: a station on loopback has no token (use --host 0.0.0.0)")
        return None
    if saved is None:
        return secrets.token_urlsafe(24)
    if not rotate and saved.exists():
        return read_token(saved)
    token = secrets.token_urlsafe(24)
    write_token(saved, token)
    return token


def read_token(path: Path) -> str:
    """The token kept in ``path``; refused when others may read it or it is not a token."""
    from edgekit.errors import EdgekitError

    try:
        mode = path.stat().st_mode & 0o777
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgekitError(f"cannot read the station's token {path} ({exc}); start with --new-token") from exc
    if mode & 0o077:
        raise EdgekitError(f"the station's token {path} may be read by other users (mode {mode:o}): "
                           f"chmod 600 {path}, or start with --new-token to replace it")
    if len(token) < 16 or not set(token) <= TOKEN_CHARS:
        raise EdgekitError(f"{path} does not hold a usable token; start with --new-token to replace it")
    return token


def write_token(path: Path, token: str) -> None:
    """Keep ``token`` in ``path``, readable by this user only (0600), replacing it atomically."""
    from edgekit.errors import EdgekitError

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # O_CREAT's mode is ANDed with the umask, and an old file keeps its own
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EdgekitError(f"cannot keep the station's token in {path} ({exc.strerror or exc})") from exc


def token_path(db_path: Path) -> Path:
    """Where the station keeps its token: beside its database."""
    return db_path.with_name(db_path.name + ".serve-token")


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
                   "requires an access token: a random one kept beside the database (phones stay joined "
                   f"across restarts), or ${TOKEN_ENV}.")
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
@click.option("--new-token", is_flag=True,
              help="Replace the kept access token with a new one: every phone must join again.")
@allow_unsigned_option()
def serve(host: str, port: int, bundle: Path | None, model_format: str | None, threads: int | None,
          db: Path | None, overlay_dir: Path | None, max_upload_mb: float, max_pending: int,
          cert: Path | None, key: Path | None, new_token: bool, allow_unsigned: bool) -> None:
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
    db_path = (db or default_db_path()).expanduser()
    token = choose_token(host, saved=token_path(db_path), rotate=new_token)
    _check_port_free(host, port)
    untrusted: list[str] = []  # why, when an unsigned bundle runs with --allow-unsigned

    def warn(line: str) -> None:
        untrusted.append(line.removeprefix("warning: "))
        click.echo(line, err=True)

    classifier = load_classifier(bundle, model_format, threads, allow_unsigned=allow_unsigned, warn=warn)
    station = Station(classifier, db_path, overlay_dir or db_path.parent / "overlays",
                      untrusted="; ".join(untrusted) or None)
    scheme = "https" if cert else "http"
    links = station_links(scheme, host, port, token)
    config = ServeConfig(token=token, max_bytes=int(max_upload_mb * 1024 * 1024), max_pending=max_pending,
                         secure_cookie=cert is not None, host=host, join_links=tuple(links))
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
