# pyright: basic
"""HTTPS on a clinic's network without a public name (``edgekit serve --tls auto``): a small CA made
once and kept beside the database, and the station's certificate signed by it for the addresses
phones open. Each phone trusts the CA once (the station page offers it); a new address (DHCP) only
means a new station certificate from the same CA, so phones stay trusting.

The CA may sign only names a clinic's network uses (name constraints: private, link-local and
loopback addresses, ``localhost`` and this machine's name), so a phone that trusts it trusts it for
nothing on the internet, even if its key were stolen. ``cryptography`` is imported in the functions.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

CA_DAYS = 3650
CERT_DAYS = 825  # the longest a phone accepts from a CA its user installed (iOS)
RENEW_DAYS = 30  # a station certificate this close to expiry is made again at start
LOCAL_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8",
                  "100.64.0.0/10", "fc00::/7", "fe80::/10", "::1/128")


@dataclass(frozen=True)
class StationTls:
    """Where the station's TLS files are: the CA certificate phones install (public), the chain the
    station serves (its certificate, then the CA's) and its private key (owner only)."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def cert(self) -> Path:
        return self.folder / "station.pem"

    @property
    def key(self) -> Path:
        return self.folder / "station.key"

    def ca_der(self) -> bytes:
        """The CA certificate as DER (what phones install from a ``.crt`` download)."""
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        return x509.load_pem_x509_certificate(self.ca_cert.read_bytes()).public_bytes(Encoding.DER)

    def ca_fingerprint(self) -> str:
        """The CA certificate's SHA-256 fingerprint, as phones show it."""
        return fingerprint(self.ca_der())


def fingerprint(der: bytes) -> str:
    """A certificate's SHA-256 fingerprint as phones show it (``AB:CD:...``)."""
    import hashlib

    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def tls_folder(db_path: Path) -> StationTls:
    """Where a station keeps its CA and certificate: beside its database."""
    return StationTls(db_path.with_name(db_path.name + ".serve-tls"))


def station_names(addresses: list[str]) -> list[str]:
    """What the station's certificate names: the addresses phones open (those of a local network),
    loopback, ``localhost`` and this machine's name."""
    host = socket.gethostname().split(".")[0]
    names = [a.strip("[]") for a in addresses if is_local(a)] + ["127.0.0.1", "::1", "localhost"]
    return list(dict.fromkeys(names + ([host] if _usable_dns(host) else [])))


def is_local(address: str) -> bool:
    """Whether the CA may vouch for ``address``: an address of a local network (or a name)."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return True
    nets = (ipaddress.ip_network(n) for n in LOCAL_NETWORKS)
    return any(ip in net for net in nets if net.version == ip.version)


def ensure_station_tls(db_path: Path, addresses: list[str],
                       now: dt.datetime | None = None) -> tuple[StationTls, list[str]]:
    """The station's TLS files for ``addresses``: the CA made on first use (kept, owner-only), the
    station certificate made again when it lacks one of the names or is near expiry. Returns the
    files and what was made ("CA", "certificate"); refused in one line when a key is readable by
    others or a file does not load."""
    from edgekit.errors import EdgekitError

    tls = tls_folder(db_path)
    now = now or dt.datetime.now(dt.timezone.utc)
    names = station_names(addresses)
    made: list[str] = []
    try:
        tls.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for key in (tls.ca_key, tls.key):
            _check_private(key)
        if not tls.ca_cert.exists() or not tls.ca_key.exists():
            _write_ca(tls, now)
            made.append("CA")
        ca_cert, ca_key = _load_ca(tls)
        if made or not _covers(tls.cert, tls.key, ca_cert, names, now):
            _write_station(tls, ca_cert, ca_key, names, now)
            made.append("certificate")
    except OSError as exc:
        raise EdgekitError(f"cannot keep the station's TLS files in {tls.folder} "
                           f"({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise EdgekitError(f"the station's TLS files in {tls.folder} do not load ({exc}); remove the folder "
                           "to make a new CA (every phone must then install it again)") from exc
    return tls, made


def _usable_dns(name: str) -> bool:
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", name))


def _check_private(path: Path) -> None:
    from edgekit.errors import EdgekitError

    if path.exists() and path.stat().st_mode & 0o077:
        raise EdgekitError(f"the station's TLS key {path} may be read by other users "
                           f"(mode {path.stat().st_mode & 0o777:o}): chmod 600 {path}")


def _write_private(path: Path, data: bytes) -> None:
    """``data`` into ``path``, owner-only (0600), replacing it atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM)


def _write_ca(tls: StationTls, now: dt.datetime) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname().split(".")[0]
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgekit screening station"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"edgekit station CA ({host[:40]})")])
    permitted: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_network(n)) for n in LOCAL_NETWORKS]
    permitted.append(x509.DNSName("localhost"))
    if _usable_dns(host):
        permitted.append(x509.DNSName(host))
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None),
                           critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    _write_private(tls.ca_key, _pem_key(key))
    tls.ca_cert.write_bytes(_pem_cert(cert))


def _load_ca(tls: StationTls):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return x509.load_pem_x509_certificate(tls.ca_cert.read_bytes()), \
        load_pem_private_key(tls.ca_key.read_bytes(), None)


def _general_names(names: list[str]) -> list:
    from cryptography import x509

    out = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def _covers(cert_path: Path, key_path: Path, ca_cert, names: list[str], now: dt.datetime) -> bool:
    """Whether the kept station certificate is the CA's, names every one of ``names`` and is not
    near expiry."""
    from cryptography import x509

    if not cert_path.exists() or not key_path.exists():
        return False
    from cryptography.hazmat.primitives.serialization import Encoding as Enc
    from cryptography.hazmat.primitives.serialization import PublicFormat, load_pem_private_key

    cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    key = load_pem_private_key(key_path.read_bytes(), None)
    spki = (Enc.DER, PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        return False  # a start stopped between writing the key and the certificate
    expires = getattr(cert, "not_valid_after_utc", None) or \
        cert.not_valid_after.replace(tzinfo=dt.timezone.utc)
    if cert.issuer != ca_cert.subject or expires < now + dt.timedelta(days=RENEW_DAYS):
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception:  # another CA's key (a CA made again): not ours
        return False
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(_general_names(names)) <= set(san)


def _write_station(tls: StationTls, ca_cert, ca_key, names: list[str], now: dt.datetime) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=False, crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_private(tls.key, _pem_key(key))
    tls.cert.write_bytes(_pem_cert(cert) + _pem_cert(ca_cert))  # the chain: station, then CA
