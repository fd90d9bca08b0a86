# pyright: basic
"""Who may open the screening station and where: its access token (kept beside the database, or
``$EDGEKIT_SERVE_TOKEN``), the addresses a phone on the same network can open, the join link's QR
code, and the checks made before listening (the port is free, the TLS pair loads). Standard library
only (``segno`` for the QR code, when installed)."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

from edgekit.device.serve.join import is_loopback

TOKEN_ENV = "EDGEKIT_SERVE_TOKEN"
TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def choose_token(host: str, env: dict[str, str] | None = None, saved: Path | None = None,
                 rotate: bool = False) -> str | None:
    """The access token: ``$EDGEKIT_SERVE_TOKEN`` when set; None (no token) on loopback; else the one
    kept in ``saved`` (so phones stay joined across restarts), made and kept there on first use or
    when ``rotate``; a fresh random one each start when there is no ``saved``."""
    from edgekit.errors import EdgekitError

    given = (os.environ if env is None else env).get(TOKEN_ENV, "").strip()
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


def check_port_free(host: str, port: int) -> None:
    """Refuse, in one line, an address and port another program already listens on."""
    from edgekit.errors import EdgekitError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as exc:
            raise EdgekitError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port "
                               "or --host") from exc


def check_tls(cert: Path | None, key: Path | None) -> None:
    """Refuse, in one line, half a TLS pair or a certificate and key that do not load together."""
    from edgekit.errors import EdgekitError

    if (cert is None) != (key is None):
        raise EdgekitError("HTTPS needs both --cert and --key")
    if cert is not None:
        import ssl

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise EdgekitError(f"cannot use --cert {cert} with --key {key}: {exc}") from exc
