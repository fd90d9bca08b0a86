# pyright: basic
"""The HTTP side of ``edgekit serve``: the page, the JSON API, the access token, the upload bounds.

Security, for a server on a shared clinic Wi-Fi:
- with a token (always when listening beyond loopback), every request needs it: the page's URL
  ``/?token=...`` (which sets an HttpOnly, SameSite=Strict cookie and redirects it away), the
  cookie, or ``Authorization: Bearer ...``; anything else gets 401: a JSON reason, or for a browser
  opening a page a short HTML page saying how to join;
- without a token (loopback only), the Host header must name this machine (no DNS rebinding);
- a POST from another web origin is refused (no cross-site request forgery);
- an upload is bounded in bytes (checked while it streams in) and uploads in flight are bounded
  in number (429 beyond), and each is decoded by the device's own bounded decoder;
- the page loads nothing from elsewhere (a strict Content-Security-Policy), and works offline.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import html
import ipaddress
import json
import mimetypes
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field, field_validator
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from edgekit import __version__
from edgekit.device.serve.station import ServeError, Station
from edgekit.errors import EdgekitError, RecordsError

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "edgekit_token"
COOKIE_SECONDS = 30 * 24 * 3600  # the phone stays joined across its own restarts, as across the station's
# which phone is asking: a random id the station gives each joined phone (a cookie), or that an API
# client names itself; stored hashed with the sessions it opens, so a phone lists only its own
PHONE_COOKIE = "edgekit_phone"
PHONE_HEADER = "x-edgekit-phone"
PHONE_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MULTIPART_SLACK = 64 * 1024  # multipart headers and boundaries around the file
MAX_JSON_BYTES = 1 << 20  # any other request body (1,000 verdicts take ~70 kB)
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; manifest-src 'self'; worker-src 'self'; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'none'")
# what installing the page needs and holds nothing of the station's: browsers fetch the manifest, its
# icons and the service worker without the page's cookie
PUBLIC = {"/sw.js", "/static/manifest.webmanifest", "/static/icon-192.png", "/static/icon-512.png",
          "/ca.crt"}  # the station's own CA certificate (--tls auto): a phone installs it before joining
MEDIA_TYPES = {".webmanifest": "application/manifest+json"}
NO_TOKEN = "missing or wrong access token: open the address `edgekit serve` printed when it started"
JOIN_STYLE = ("body{font:20px/1.4 system-ui,sans-serif;max-width:36rem;margin:1rem auto;padding:0 .8rem}"
              "h1{font-size:1.4rem}li{margin:.4rem 0}")
# hashed into its own Content-Security-Policy: the page loads nothing, and no other inline style runs
JOIN_CSP = ("default-src 'none'; style-src 'sha256-"
            + base64.b64encode(hashlib.sha256(JOIN_STYLE.encode()).digest()).decode()
            + "'; base-uri 'none'; frame-ancestors 'none'")
JOIN_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edgekit: join the station</title><style>{JOIN_STYLE}</style></head><body>
<h1>This phone is not joined to the screening station</h1>
<p>{{why}}</p>
<ol>
<li>On the station's screen, scan the QR code that <code>edgekit serve</code> shows, or type the
address it printed (it ends with <code>?token=…</code>).</li>
<li>Stay on the clinic's Wi-Fi: the station answers only on its own network.</li>
<li>If the station was started with <code>--new-token</code>, old links stop working: ask for the
new one.</li>
</ol>
<p>Nothing was recorded from this page.</p>
</body></html>
"""


STATION_STYLE = ("body{font:20px/1.4 system-ui,sans-serif;max-width:44rem;margin:1rem auto;padding:0 .8rem}"
                 "h1{font-size:1.4rem}svg{display:block;width:min(90vw,26rem);height:auto;margin:1rem 0}"
                 "code{font-size:.9rem;overflow-wrap:anywhere}")
STATION_CSP = ("default-src 'none'; style-src 'sha256-"
               + base64.b64encode(hashlib.sha256(STATION_STYLE.encode()).digest()).decode()
               + "'; base-uri 'none'; frame-ancestors 'none'")


def trust_section(links: list[str], ca_der: bytes) -> str:
    """How a phone trusts the station's own CA, once (``--tls auto``): where to get it, how to
    install it on Android and iOS, and its fingerprint to compare."""
    from urllib.parse import urlsplit

    from edgekit.device.serve.join import qr_svg
    from edgekit.device.serve.tls import fingerprint

    u = urlsplit(links[0]) if links else None
    where = f"{u.scheme}://{u.netloc}/ca.crt" if u else "/ca.crt"
    return ("<h2>First, once per phone: trust this station</h2>"
            "<p>This station signs its HTTPS certificate with its own certificate authority (CA). "
            "Scan this code, or open <code class=\"ca-link\">" + html.escape(where) + "</code>; the browser "
            "warns this one time (the phone does not know the CA yet): continue, and the certificate "
            "downloads.</p>" + (qr_svg(where) or "") +
            "<ul><li><b>Android</b>: Settings → Security → Encryption &amp; credentials → Install a "
            "certificate → CA certificate → choose <i>edgekit-station-ca.crt</i>.</li>"
            "<li><b>iPhone</b>: allow the download, then Settings → Profile Downloaded → Install; then "
            "Settings → General → About → Certificate Trust Settings → turn on <i>edgekit station "
            "CA</i>.</li></ul>"
            f"<p>Before installing, check that the phone shows this SHA-256 fingerprint: <code "
            f"class=\"ca-fingerprint\">{fingerprint(ca_der)}</code>. This CA can vouch only for "
            "addresses on a local network. Then scan the join code below.</p>")


def station_page(links: list[str], ca_der: bytes | None = None) -> str:
    """The station's own screen: the join link's QR code for phones to scan, and the links; first,
    with ``ca_der`` (the station's own CA), how a phone trusts it."""
    from edgekit.device.serve.join import qr_svg

    if not links:
        body = ("<p>This station answers on this machine only (no access token). Start it with "
                "<code>--host 0.0.0.0</code> to let phones on the clinic's Wi-Fi join.</p>")
    else:
        svg = qr_svg(links[0])
        items = "".join(f"<li><code class=\"join-link\">{html.escape(u)}</code></li>" for u in links)
        body = (svg or "<p>(no QR code: pip install segno, or edgekit[serve], to show one)</p>") + \
            f"<p>Or type the address:</p><ul>{items}</ul>" + \
            "<p>It holds the access token: show it only to the clinic's phones. Each phone lists only the " \
            "sessions it started; this screen's <a href=\"/\">page</a> lists all.</p>"
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>edgekit: join this station</title><style>{STATION_STYLE}</style></head><body>"
            "<h1>Join this screening station</h1>" + (trust_section(links, ca_der) if ca_der else "") +
            f"<p>Scan with the phone's camera.</p>{body}</body></html>\n")


@dataclass
class ServeConfig:
    """Limits and access for one server."""

    token: str | None = None  # None: no token (loopback only)
    max_bytes: int = 20 * 1024 * 1024  # per upload
    max_pending: int = 8  # uploads received or waiting at once; more get 429
    upload_seconds: float = 120.0  # a slower upload holds a slot too long: refused (408)
    secure_cookie: bool = False  # True under HTTPS
    host: str | None = None  # the address it listens on (`--host`): its own name is always answered
    join_links: tuple[str, ...] = ()  # what the terminal printed (the station page)
    ca_certificate: bytes | None = None  # DER: the station's own CA (--tls auto), offered at /ca.crt


TEXT = r"^[^\x00-\x1f\x7f]*$"  # one line, no control characters
SessionId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="Session id")]
Sha256 = Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the uploaded bytes")]
RecordId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="Record id of one cell")]


def _one_line(what: str, value: str | None) -> str | None:
    """The records' own rule for names shown on screens and in CSV (one printable line), as a 422."""
    from edgekit.device.records import check_name

    try:
        check_name(what, value)
    except RecordsError as exc:
        raise ValueError(str(exc)) from None
    return value


class VerdictIn(BaseModel):
    record_id: int = Field(ge=1, le=2**63 - 1, description="The cell's record id (from the gallery).")
    verdict: Literal["parasitized", "not parasitized", "confirm", "overrule"] = Field(
        description="The reviewer's call, or confirm / overrule the model's call at the session's cutoff.")


class ReviewIn(BaseModel):
    verdicts: list[VerdictIn] = Field(min_length=1, max_length=1000)
    reviewer: str | None = Field(None, max_length=64, pattern=TEXT, description="Who reviewed.")
    note: str | None = Field(None, max_length=500, pattern=TEXT, description="Stored with each verdict.")

    @field_validator("reviewer")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        return _one_line("reviewer", v)


class SessionIn(BaseModel):
    patient: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$",
                         description="Patient id (the same id with the same model resumes the session).")
    site: str | None = Field(None, max_length=64, pattern=TEXT)
    operator: str | None = Field(None, max_length=64, pattern=TEXT)

    @field_validator("patient", "site", "operator")
    @classmethod
    def _printable(cls, v: str | None, info) -> str | None:
        return _one_line(info.field_name, v)


def _load_assets() -> dict[str, tuple[bytes, bytes | None, str]]:
    """Every static file with its gzip form (text only, compressed once, at start) and its media type."""
    assets = {}
    for path in sorted(STATIC.iterdir()):
        if path.is_file():
            data = path.read_bytes()
            mtype = MEDIA_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or \
                "application/octet-stream"
            text = mtype.startswith("text/") or mtype.endswith(("javascript", "json"))
            if text:
                mtype += "; charset=utf-8"
            assets[path.name] = (data, gzip.compress(data, 9, mtime=0) if text else None, mtype)
    return assets


def _host_only(host: str) -> str:
    """``host`` of a Host header ``host[:port]`` (IPv6 in brackets kept)."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _same_origin_path(path: str) -> str:
    """``path`` as a redirect target on this server: never ``//host/...`` or ``/\\host``, which
    browsers read as another site's address."""
    return "/" + path.lstrip("/\\")


def _json_error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _compressed(request: Request, content: dict[str, Any]) -> Response:
    """``content`` as JSON, gzipped for a client that takes it: a field's answer carries its cells'
    outlines (tens of kB that a weak link would otherwise download as they are)."""
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    headers = {"Vary": "Accept-Encoding"}
    if len(body) > 1024 and "gzip" in request.headers.get("accept-encoding", ""):
        body = gzip.compress(body, 6, mtime=0)
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type="application/json", headers=headers)


def _refused(request: Request) -> Response:
    """401: the join page for a browser opening a page, a JSON reason for everything else."""
    headers = {"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"}
    if not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", ""):
        why = ("This link's access token is not the station's (an old link?)."
               if request.query_params.get("token") else "The page needs the station's access link.")
        return HTMLResponse(JOIN_PAGE.replace("{why}", why), status_code=401,
                            headers={**headers, "Content-Security-Policy": JOIN_CSP,
                                     "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})
    return _json_error(401, NO_TOKEN, headers)


def _own_machine(request: Request) -> bool:
    """Whether the request comes from the station machine itself: a loopback address, or the
    address it was reached at (a browser on the station opening its own LAN address)."""
    client = request.client.host if request.client else ""
    server = request.scope.get("server") or ("",)
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return False
    ip = getattr(ip, "ipv4_mapped", None) or ip  # a dual-stack socket names IPv4 peers ::ffff:a.b.c.d
    return ip.is_loopback or client == server[0]


def _phone_id(request: Request) -> str | None:
    """The id the phone presents (its cookie, or an API client's header); None when it has none."""
    given = request.headers.get(PHONE_HEADER) or request.cookies.get(PHONE_COOKIE) or ""
    return given if PHONE_ID.match(given) else None


def phone_key(phone_id: str) -> str:
    """How a phone is stored with its sessions: a hash, so the database cannot be used to pose as it."""
    return hashlib.sha256(phone_id.encode()).hexdigest()[:32]


def _which_phone(request: Request) -> tuple[str | None, str | None]:
    """The stored key of the phone asking, and the new id to hand it when it has none; (None, None)
    for the station machine itself (it sees every session)."""
    if _own_machine(request):
        return None, None
    phone = _phone_id(request)
    if phone is not None:
        return phone_key(phone), None
    new = secrets.token_urlsafe(24)
    return phone_key(new), new


def _given_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.cookies.get(COOKIE) or request.query_params.get("token")


async def _read_upload(request: Request, limit: int, name: str | None, seconds: float,
                       ) -> tuple[str | None, bytes]:
    """The uploaded file's name and bytes: a raw body (``Content-Type: image/...``) or the one file
    of a multipart form. Refused with 413 as soon as it grows past ``limit``."""
    mb = limit / (1 << 20)  # the unit --max-upload-mb is given in
    too_big = ServeError(413, f"upload larger than {mb:.3g} MB (--max-upload-mb); send a smaller image")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + MULTIPART_SLACK:
        raise too_big
    buf = bytearray()

    async def receive() -> None:
        async for chunk in request.stream():
            buf.extend(chunk)
            if len(buf) > limit + MULTIPART_SLACK:
                raise too_big

    try:
        await asyncio.wait_for(receive(), seconds)
    except asyncio.TimeoutError as exc:
        raise ServeError(408, f"upload took longer than {seconds:.0f} s; send it again") from exc
    except ClientDisconnect as exc:
        raise ServeError(400, "the upload was cut off before its end; nothing was recorded") from exc
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async def once():
            yield bytes(buf)

        try:
            form = await MultiPartParser(request.headers, once(), max_files=1, max_fields=4).parse()
        except MultiPartException as exc:
            raise ServeError(400, f"malformed multipart upload ({exc.message})") from exc
        part = next((v for v in form.values() if isinstance(v, UploadFile)), None)
        if part is None:
            raise ServeError(400, "the form has no file part")
        data, name = await part.read(), part.filename or name
        await form.close()
    else:
        data = bytes(buf)
    if len(data) > limit:
        raise too_big
    return name, data


class BodyLimit:
    """ASGI middleware: a request body other than an image upload (which ``_read_upload`` bounds by
    --max-upload-mb) is refused with 413 past ``limit`` bytes, by its Content-Length or as it arrives:
    a 200 MB JSON body is never held in memory."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].endswith("/images"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        state = {"seen": 0, "over": False}

        async def limited_receive() -> dict[str, Any]:
            message = await receive()
            state["seen"] += len(message.get("body", b""))
            if state["seen"] > self.limit:  # the app sees the client gone; its answer is replaced
                state["over"] = True
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if not state["over"]:
                await send(message)
            elif message["type"] == "http.response.start":
                await self._refuse(send)

        await self.app(scope, limited_receive, guarded_send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"detail": f"request body larger than {self.limit // 1024} kB"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class HeadAsGet:
    """ASGI middleware: HEAD is answered as GET without its body (HTTP wants both on every page; the
    routes name GET only, so a monitor's or ``curl -I``'s HEAD got 405)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


def create_app(station: Station, config: ServeConfig) -> FastAPI:
    """The FastAPI application serving ``station`` (OpenAPI at ``/openapi.json``; no CDN docs)."""
    app = FastAPI(title="edgekit serve", version=__version__, docs_url=None, redoc_url=None,
                  description="Screening station: patient sessions, field and crop uploads, summaries.")
    app.add_middleware(BodyLimit, limit=MAX_JSON_BYTES)
    assets = _load_assets()

    async def run(fn, *args) -> Any:
        return await asyncio.wrap_future(station.submit(fn, *args))

    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, exc: ServeError) -> JSONResponse:
        return _json_error(exc.status, exc.detail)

    @app.exception_handler(EdgekitError)
    async def _edgekit_error(_: Request, exc: EdgekitError) -> JSONResponse:
        return _json_error(503 if isinstance(exc, RecordsError) else 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
                 for e in exc.errors()]
        return _json_error(422, "; ".join(parts) or "invalid request")

    own_hosts = LOOPBACK_HOSTS | ({config.host, f"[{config.host.strip('[]')}]"} if config.host else set())

    @app.middleware("http")
    async def _access(request: Request, call_next):
        host = request.headers.get("host", "")
        if config.token is None and _host_only(host) not in own_hosts:
            return _json_error(403, f"host {host!r} refused: this server only answers on loopback")
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD", "OPTIONS") and origin and urlsplit(origin).netloc != host:
            return _json_error(403, "cross-site request refused")
        # the station's operator (no token: loopback only; or this machine itself) sees every session
        request.state.phone = None
        new_phone = None
        if config.token is not None and not (request.method == "GET" and request.url.path in PUBLIC):
            given = _given_token(request)
            if not given or not hmac.compare_digest(given.encode(), config.token.encode()):
                return _refused(request)
            request.state.phone, new_phone = _which_phone(request)
            if request.query_params.get("token") and request.method == "GET" and \
                    not request.url.path.startswith("/api/"):
                # the page's address: keep the token in a cookie, out of the address bar and history
                resp = RedirectResponse(_same_origin_path(request.url.path), status_code=303)
                resp.set_cookie(COOKIE, config.token, max_age=COOKIE_SECONDS, httponly=True,
                                samesite="strict", secure=config.secure_cookie)
                _keep_phone(resp, new_phone)
                return resp
        response = await call_next(request)
        _keep_phone(response, new_phone)
        response.headers.setdefault("Content-Security-Policy", CSP)  # the station page sets its own
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def _keep_phone(response: Response, phone: str | None) -> None:
        if phone is not None:
            response.set_cookie(PHONE_COOKIE, phone, max_age=COOKIE_SECONDS, httponly=True, samesite="strict",
                                secure=config.secure_cookie)

    async def own(request: Request, session_id: int) -> None:
        """404 for a session this phone did not open, as for one that does not exist (its patient id
        stays on the phones that opened it); the station's operator opens every session."""
        phone = request.state.phone
        if phone is not None and session_id not in await run(station.phone_sessions, phone):
            raise ServeError(404, f"no session {session_id}")

    def _asset(request: Request, name: str) -> Response:
        data, gz, mtype = assets[name]
        headers = {"Vary": "Accept-Encoding", "Cache-Control": "no-cache"}
        if gz is not None and "gzip" in request.headers.get("accept-encoding", ""):
            headers["Content-Encoding"] = "gzip"
            data = gz
        return Response(data, media_type=mtype, headers=headers)

    @app.get("/", include_in_schema=False)
    async def page(request: Request) -> Response:
        return _asset(request, "index.html")

    @app.get("/station", include_in_schema=False)
    async def station_screen(request: Request) -> Response:
        if request.state.phone is not None:  # a phone: as if there were no such page
            raise ServeError(404, "no such page")
        links = list(config.join_links)
        if not links and config.token is not None:
            links = [f"{str(request.base_url).rstrip('/')}/?token={config.token}"]
        return HTMLResponse(station_page(links, config.ca_certificate),
                            headers={"Content-Security-Policy": STATION_CSP})

    @app.get("/ca.crt", include_in_schema=False)
    async def ca_certificate() -> Response:
        if config.ca_certificate is None:
            raise ServeError(404, "this station has no CA of its own (it was not started with --tls auto)")
        return Response(config.ca_certificate, media_type="application/x-x509-ca-cert",
                        headers={"Content-Disposition": 'attachment; filename="edgekit-station-ca.crt"'})

    @app.get("/sw.js", include_in_schema=False)
    async def service_worker(request: Request) -> Response:
        return _asset(request, "sw.js")  # at the root: its scope is the whole page

    @app.get("/static/{name}", include_in_schema=False)
    async def static(request: Request, name: str) -> Response:
        if name not in assets:
            raise ServeError(404, f"no such file {name!r}")
        return _asset(request, name)

    @app.get("/api/status", summary="Server, model and limits")
    async def status(request: Request) -> dict[str, Any]:
        info = station.info()
        info.update(version=__version__, max_upload_bytes=config.max_bytes, max_pending=config.max_pending,
                    pending=station.pending, operator=request.state.phone is None)
        return info

    @app.post("/api/sessions", summary="Start or resume a patient's session")
    async def open_session(request: Request, body: SessionIn) -> dict[str, Any]:
        return await run(station.open_session, body.patient, body.site, body.operator, request.state.phone)

    @app.get("/api/sessions", summary="Sessions with their patient summaries, newest first (a phone: the "
                                      "sessions it opened; the station's own screen: all)")
    async def sessions(request: Request,
                       limit: int = Query(50, ge=1, le=10_000, description="At most this many"),
                       ) -> list[dict[str, Any]]:
        return await run(station.sessions, limit, request.state.phone)

    @app.get("/api/drift", summary="Site drift: rolling median of recent sessions' guard scores per site")
    async def drift(window: int = Query(5, ge=1, le=1000, description="Sessions in the rolling median")
                    ) -> dict[str, Any]:
        return await run(station.drift, window)

    @app.get("/api/sessions/{session_id}", summary="One session: summary and records")
    async def session(request: Request, session_id: SessionId,
                      records: bool = Query(True, description="Include the records")) -> dict[str, Any]:
        await own(request, session_id)
        return await run(station.session, session_id, records)

    @app.get("/api/sessions/{session_id}/uploads", summary="The session's uploads with the answer each was "
                                                           "given (the page's field cards), oldest first")
    async def uploads(request: Request, session_id: SessionId) -> dict[str, Any]:
        await own(request, session_id)
        return await run(station.uploads, session_id)

    upload_body = {"requestBody": {"required": True, "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
    }}}

    @app.post("/api/sessions/{session_id}/images", openapi_extra=upload_body, response_class=Response,
              responses={200: {"content": {"application/json": {"schema": {"type": "object"}}},
                               "description": "The answer (JSON; gzipped when the client accepts it)"}},
              summary="Upload one field photo or cell crop: find cells, classify, record")
    async def add_image(
        request: Request, session_id: SessionId,
        kind: Literal["field", "crop"] = Query("field", description="field: a whole microscope field; "
                                               "crop: one cell crop"),
        name: str | None = Query(None, max_length=200, description="File name (multipart gives its own)."),
        replace: bool = Query(False, description="A field already counted in the session is counted in its "
                                                 "place when this take is sharper"),
    ) -> Response:
        await own(request, session_id)
        if station.pending >= config.max_pending:
            raise ServeError(429, f"busy: {station.pending} uploads are being processed; retry in a moment")
        station.pending += 1
        sha = None
        try:
            name, data = await _read_upload(request, config.max_bytes, name, config.upload_seconds)
            sha = hashlib.sha256(data).hexdigest()
            station.in_flight[sha] = station.in_flight.get(sha, 0) + 1
            return _compressed(request, await run(station.add_image, session_id, kind, name, data, replace))
        finally:
            station.pending -= 1
            if sha is not None:
                station.in_flight[sha] -= 1
                if not station.in_flight[sha]:
                    del station.in_flight[sha]

    @app.get("/api/sessions/{session_id}/uploads/{sha256}",
             summary="What became of an upload (by the SHA-256 of its bytes): recorded, in progress, "
                     "or not recorded")
    async def upload_state(request: Request, session_id: SessionId, sha256: Sha256) -> dict[str, Any]:
        await own(request, session_id)
        if sha256 in station.in_flight:  # received, still waiting for or in the analysis: ask again
            return {"sha256": sha256, "state": "in progress", "answer": None}
        return await run(station.upload, session_id, sha256)

    @app.get("/api/sessions/{session_id}/review", summary="The review gallery: flagged cells and verdicts")
    async def review(request: Request, session_id: SessionId, everything: bool = Query(
            False, alias="all", description="Every classified cell, not only those called parasitized or "
                                            "uncertain")) -> dict[str, Any]:
        await own(request, session_id)
        return await run(station.review, session_id, everything)

    @app.get("/api/sessions/{session_id}/cells/{record_id}.png", response_class=Response,
             summary="The kept crop of one flagged cell, exactly as it was classified")
    async def cell_png(request: Request, session_id: SessionId, record_id: RecordId) -> Response:
        await own(request, session_id)
        png = await run(station.cell_png, session_id, record_id)
        # revalidated every time: ids start again in another database, and a reviewer must never
        # judge a stale picture under a cell's number
        etag = f'"{hashlib.sha256(png).hexdigest()[:32]}"'
        headers = {"Cache-Control": "private, no-cache", "ETag": etag}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(png, media_type="image/png", headers=headers)

    @app.post("/api/sessions/{session_id}/reviews", summary="Record a reviewer's verdicts on cells")
    async def confirm(request: Request, session_id: SessionId, body: ReviewIn) -> dict[str, Any]:
        await own(request, session_id)
        pairs = [(v.record_id, v.verdict) for v in body.verdicts]
        return await run(station.confirm, session_id, pairs, body.reviewer, body.note)

    @app.get("/api/overlays/{sha256}.jpg", summary="A field's annotated overlay", response_class=FileResponse)
    async def overlay(sha256: str, size: Literal["full", "phone"] = Query(
            "full", description="phone: a copy sized for a phone's screen (long side 1024 px)"),
                      ) -> FileResponse:
        path = await run(station.overlay_path, sha256, size == "phone")  # written after the answer
        return FileResponse(path, media_type="image/jpeg",
                            headers={"Cache-Control": "private, no-cache"})  # rewritten by another model

    @app.get("/api/export.csv", summary="Records as CSV (one session, or all)", response_class=Response)
    async def export(request: Request, session: int | None = Query(
            None, description="Session id; all when absent (a phone: all of its own)")) -> Response:
        if session is not None:
            await own(request, session)
        text = await run(station.export_csv, session, request.state.phone)
        fname = f"edgekit-session-{session}.csv" if session is not None else "edgekit-sessions.csv"
        return Response(text, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{fname}"'})

    app.add_middleware(HeadAsGet)  # the outermost: every check sees the GET it answers
    return app
