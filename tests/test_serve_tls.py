"""HTTPS on a clinic's network with the station's own CA (issue 23: ``edgekit serve --tls auto``): the
CA is made once and kept owner-only beside the database, the station's certificate follows its
addresses, the served chain verifies against the CA (and only for local-network names), the station
screen offers the CA with how to trust it, and the page installs (its service worker registers) in a
browser that trusts the CA."""

from __future__ import annotations

import base64
import hashlib
import socket
import ssl
import threading

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'edgekit[serve]')")
from fastapi.testclient import TestClient  # noqa: E402
from test_serve import AUTH, BASE, TOKEN, _station  # noqa: E402
from test_serve_browser import CHROMIUM_ARGS, Server, _browser_setup  # noqa: E402

from edgekit.device.serve.app import ServeConfig, create_app  # noqa: E402
from edgekit.device.serve.tls import ensure_station_tls, fingerprint  # noqa: E402
from edgekit.errors import EdgekitError  # noqa: E402

LAN_IP = "192.168.1.20"


def _names(cert_path) -> set[str]:
    from cryptography import x509

    cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n.value) for n in san}


def test_the_ca_is_made_once_owner_only_and_a_new_address_gets_a_new_certificate_from_it(tmp_path):
    db = tmp_path / "screening.sqlite"
    tls, made = ensure_station_tls(db, [LAN_IP, "8.8.8.8"])
    assert made == ["CA", "certificate"]
    assert tls.folder.parent == tmp_path and tls.folder.stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in (tls.ca_key, tls.key)} == {0o600}
    assert LAN_IP in _names(tls.cert) and "127.0.0.1" in _names(tls.cert)
    assert "8.8.8.8" not in _names(tls.cert)  # not a local network's: the CA may not vouch for it
    ca, cert = tls.ca_cert.read_bytes(), tls.cert.read_bytes()
    assert ensure_station_tls(db, [LAN_IP])[1] == []  # kept: nothing made again
    assert tls.cert.read_bytes() == cert
    assert ensure_station_tls(db, ["10.0.0.7"])[1] == ["certificate"]  # a new address (DHCP)
    assert "10.0.0.7" in _names(tls.cert) and tls.ca_cert.read_bytes() == ca  # same CA: phones keep trusting
    tls.ca_key.chmod(0o644)
    with pytest.raises(EdgekitError, match="may be read by other users"):
        ensure_station_tls(db, [LAN_IP])


def _handshake(tls, server_hostname: str, context: ssl.SSLContext) -> None:
    """One TLS handshake with a server holding the station's chain and key."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tls.cert, tls.key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def accept():
            conn, _ = listener.accept()
            try:
                with server.wrap_socket(conn, server_side=True) as s:
                    s.recv(1)
            except (ssl.SSLError, OSError):
                pass

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        try:
            with socket.create_connection(listener.getsockname()) as c, \
                    context.wrap_socket(c, server_hostname=server_hostname) as s:
                s.send(b"x")
        finally:
            t.join(10)


def test_the_served_chain_verifies_against_the_ca_and_only_for_local_names(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    tls, _ = ensure_station_tls(tmp_path / "screening.sqlite", [LAN_IP])
    trusting = ssl.create_default_context(cafile=str(tls.ca_cert))
    for name in (LAN_IP, "127.0.0.1", "localhost"):
        _handshake(tls, name, trusting)
    with pytest.raises(ssl.SSLCertVerificationError):  # a phone that has not installed the CA
        _handshake(tls, LAN_IP, ssl.create_default_context())
    with pytest.raises(ssl.SSLCertVerificationError):  # a name the certificate does not hold
        _handshake(tls, "192.168.1.99", trusting)
    # the CA's name constraints: even signed by its own key, a public name is refused
    ca_cert = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(tls.ca_key.read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bank")])
    rogue = (x509.CertificateBuilder().subject_name(name)
             .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(ca_cert.not_valid_before_utc).not_valid_after(ca_cert.not_valid_after_utc)
             .add_extension(x509.SubjectAlternativeName([x509.DNSName("bank.example.com")]), critical=False)
             .sign(ca_key, hashes.SHA256()))
    tls.cert.write_bytes(rogue.public_bytes(serialization.Encoding.PEM) + tls.ca_cert.read_bytes())
    tls.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    with pytest.raises(ssl.SSLCertVerificationError, match="permitted|constraint|subtree"):
        _handshake(tls, "bank.example.com", trusting)


def test_the_station_screen_offers_the_ca_and_phones_download_it_without_the_token(tmp_path):
    tls, _ = ensure_station_tls(tmp_path / "screening.sqlite", [LAN_IP])
    der = tls.ca_der()
    st = _station(tmp_path)
    try:
        link = f"https://{LAN_IP}:8000/?token={TOKEN}"
        config = ServeConfig(token=TOKEN, join_links=(link,), ca_certificate=der, secure_cookie=True)
        phone = TestClient(create_app(st, config), base_url=BASE, client=("192.168.1.31", 40000))
        r = phone.get("/ca.crt")  # before joining: no token
        assert r.status_code == 200 and r.content == der
        assert r.headers["content-type"] == "application/x-x509-ca-cert"
        own = TestClient(create_app(st, config), base_url=BASE, client=("127.0.0.1", 40001))
        page = own.get("/station", headers=AUTH)
        assert page.status_code == 200
        assert f"https://{LAN_IP}:8000/ca.crt" in page.text and fingerprint(der) in page.text
        assert "Android" in page.text and "Certificate Trust Settings" in page.text
        plain = ServeConfig(token=TOKEN, join_links=(link,))  # --cert/--key, or plain http
        assert TestClient(create_app(st, plain), base_url=BASE).get("/ca.crt").status_code == 404
        no_ca = TestClient(create_app(st, plain), base_url=BASE, client=("127.0.0.1", 40002))
        assert "ca.crt" not in no_ca.get("/station", headers=AUTH).text
    finally:
        st.close()


def test_tls_auto_with_cert_and_key_is_refused_in_one_line(tmp_path):
    from click.testing import CliRunner

    from edgekit.device.serve.commands import serve

    pem = tmp_path / "x.pem"
    pem.write_text("x")
    r = CliRunner().invoke(serve, ["--tls", "auto", "--cert", str(pem), "--key", str(pem),
                                   "--db", str(tmp_path / "s.sqlite")])
    assert r.exit_code != 0 and isinstance(r.exception, EdgekitError)
    assert "leave out --cert and --key" in str(r.exception)


def _spki_hash(pem: bytes) -> str:
    """Base64 SHA-256 of a certificate's public key: what chromium's
    --ignore-certificate-errors-spki-list trusts (here: the station's CA, as a phone that installed it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    spki = x509.load_pem_x509_certificate(pem).public_key().public_bytes(Encoding.DER,
                                                                         PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def test_the_page_installs_over_https_in_a_browser_that_trusts_the_stations_ca(tmp_path):
    from edgekit.device.serve.tls import tls_folder

    chromium, sync_api, shots = _browser_setup(tmp_path)
    db = tmp_path / "screening.sqlite"
    server = Server(db, "--tls", "auto", scheme="https", token=TOKEN)
    try:
        ca_pem = tls_folder(db).ca_cert.read_bytes()
        with sync_api.sync_playwright() as p:
            untrusting = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            with pytest.raises(sync_api.Error, match="ERR_CERT_AUTHORITY_INVALID"):
                untrusting.new_page().goto(f"{server.url}/?token={TOKEN}")
            untrusting.close()
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
                *CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={_spki_hash(ca_pem)}"])
            page = browser.new_context(**p.devices["Pixel 5"]).new_page()
            page.goto(f"{server.url}/?token={TOKEN}")
            page.wait_for_selector("#model:has-text('tflite')")
            assert page.evaluate("() => window.isSecureContext && location.protocol") == "https:"
            scope = page.evaluate("() => navigator.serviceWorker.ready.then((r) => r.scope)")
            assert scope == f"{server.url}/"
            page.reload()
            assert page.evaluate("() => Boolean(navigator.serviceWorker.controller)")
            browser.close()
    finally:
        out = server.stop()
    assert "HTTPS with this station's CA" in out
