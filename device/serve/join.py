# pyright: basic
"""How a phone joins the station: the addresses it can open, the join link and its QR code (for the
terminal and for the station's own screen). Standard library only at import."""

from __future__ import annotations

import ipaddress
import socket


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def lan_addresses(host: str) -> list[str]:
    """The addresses a phone on the same network can open: ``host`` itself when it names one
    address; for 0.0.0.0 / ::, this machine's address on its default route (no packet is sent)
    and those its name resolves to, loopback left out."""
    if host not in ("0.0.0.0", "::", ""):
        return [host]
    found: list[str] = []
    for family, probe in ((socket.AF_INET, ("10.255.255.255", 1)), (socket.AF_INET6, ("fd00::1", 1))):
        if family == socket.AF_INET6 and host != "::":
            continue
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect(probe)
                found.append(s.getsockname()[0])
        except OSError:
            pass
    try:
        found += [str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except OSError:
        pass
    return [a for a in dict.fromkeys(found) if not is_loopback(a)]


def url_host(address: str) -> str:
    """``address`` as the host part of a URL (IPv6 in brackets)."""
    return f"[{address.strip('[]')}]" if ":" in address else address


def join_links(scheme: str, addresses: list[str], port: int, token: str) -> list[str]:
    """The page's address on each of ``addresses``, with the access token (the phone keeps it in a
    cookie and drops it from the address bar)."""
    return [f"{scheme}://{url_host(a)}:{port}/?token={token}" for a in addresses]


def _qr(url: str):
    try:
        import segno
    except ImportError:
        return None
    return segno.make(url, error="m", boost_error=False)


def qr_text(url: str) -> str | None:
    """A QR code of ``url`` drawn with half blocks for a terminal, or None without ``segno``."""
    import io

    qr = _qr(url)
    if qr is None:
        return None
    out = io.StringIO()
    qr.terminal(out=out, compact=True, border=2)
    return out.getvalue().rstrip("\n")


def qr_svg(url: str) -> str | None:
    """A QR code of ``url`` as an inline ``<svg>`` element (black on white, sized by the page), or
    None without ``segno``."""
    qr = _qr(url)
    if qr is None:
        return None
    return qr.svg_inline(scale=8, border=4, dark="#000", light="#fff", title="Join link QR code",
                         omitsize=True)
