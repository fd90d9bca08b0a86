"""Signed bundles: an Ed25519 signature over the canonical manifest, checked on every load.

The manifest lists every model file with its sha256, so signing the manifest signs the whole bundle:
labels, preprocessing, thresholds, the patient rule and the model bytes. ``signature.json`` next to
``manifest.json`` holds the signature and the signing key's id. A bundle is *trusted* when its
signature verifies against a public key edgekit trusts:

- the project's own keys shipped in the package (``edgekit/keys/*.pub``: the default model), and
- the site's keyring, a folder of ``*.pub`` files the user controls: ``$EDGEKIT_KEYRING``, else
  ``$XDG_CONFIG_HOME/edgekit/keys`` (``~/.config/edgekit/keys``).

Keys are PEM files (private: PKCS#8, mode 0600; public: SubjectPublicKeyInfo). The cryptography comes
from the ``cryptography`` package; nothing here is hand-rolled. Light: imported by the device runtime,
``cryptography`` is imported inside the functions that need it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import BundleError, SignatureError

SIGNATURE_NAME = "signature.json"
SIGNATURE_SCHEMA = "edgekit.signature/1"
_DOMAIN = b"edgekit.bundle-signature/1\n"  # what is signed: this prefix + the canonical manifest
ALLOW_UNSIGNED_ENV = "EDGEKIT_ALLOW_UNSIGNED"
KEYRING_ENV = "EDGEKIT_KEYRING"
SIGNING_KEY_ENV = "EDGEKIT_SIGNING_KEY"
PACKAGE_KEYS = Path(__file__).resolve().parent / "keys"
_MAX_KEY_BYTES = 16 * 1024


def canonical_manifest(data: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the manifest's JSON with sorted keys, no whitespace, ASCII only
    (a NaN in a training record is written as Python writes it, ``NaN``)."""
    try:
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    except (TypeError, ValueError) as exc:
        raise BundleError(f"manifest cannot be put in canonical form: {exc}") from exc


def keyring_dir() -> Path:
    """The site's folder of trusted public keys (may not exist)."""
    env = os.environ.get(KEYRING_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "edgekit" / "keys"


def allow_unsigned_from_env() -> bool:
    """Whether ``$EDGEKIT_ALLOW_UNSIGNED`` asks to run unsigned bundles (development and tests)."""
    return os.environ.get(ALLOW_UNSIGNED_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def key_id(public_key: Any) -> str:
    """16 hex digits of the sha256 of the raw public key: how a signature names its key."""
    return hashlib.sha256(public_key.public_bytes_raw()).hexdigest()[:16]


def _read_small(path: Path, what: str) -> bytes:
    from edgekit.safefile import read_regular_bytes

    return read_regular_bytes(path, _MAX_KEY_BYTES, what)


def load_private_key(path: str | os.PathLike) -> Any:
    """An Ed25519 private key from a PEM file written by ``edgekit keygen``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    try:
        key = serialization.load_pem_private_key(_read_small(path, "signing key"), password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


# DER of an Ed25519 SubjectPublicKeyInfo before its 32 key bytes (RFC 8410)
_ED25519_SPKI = bytes.fromhex("302a300506032b6570032100")


def _ed25519_raw(pem: bytes) -> bytes | None:
    """The 32 raw key bytes of a PEM Ed25519 public key, else None (parsed by cryptography's loader)."""
    lines = pem.strip().splitlines()
    if len(lines) < 3 or (lines[0], lines[-1]) != (b"-----BEGIN PUBLIC KEY-----",
                                                   b"-----END PUBLIC KEY-----"):
        return None
    try:
        der = base64.b64decode(b"".join(lines[1:-1]), validate=True)
    except ValueError:
        return None
    return der[len(_ED25519_SPKI):] if len(der) == 44 and der.startswith(_ED25519_SPKI) else None


def load_public_key(path: str | os.PathLike) -> Any:
    """An Ed25519 public key from a PEM ``.pub`` file. The usual PEM of an Ed25519 key is read without
    cryptography's serialization module (half of its import time, on every device start)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = Path(path)
    pem = _read_small(path, "public key")
    raw = _ed25519_raw(pem)
    if raw is not None:
        return Ed25519PublicKey.from_public_bytes(raw)
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is not an Ed25519 public key")
    return key


@dataclass
class TrustedKey:
    key_id: str
    name: str  # the file's stem
    source: Path
    public_key: Any


def trusted_keys() -> dict[str, TrustedKey]:
    """Every trusted public key by key id: the package's keys, then the site keyring's."""
    keys: dict[str, TrustedKey] = {}
    for folder in (PACKAGE_KEYS, keyring_dir()):
        if not folder.is_dir():
            continue
        for pub in sorted(folder.glob("*.pub")):
            k = load_public_key(pub)
            kid = key_id(k)
            keys.setdefault(kid, TrustedKey(kid, pub.stem, pub, k))
    return keys


def generate_keypair(stem: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``STEM.key`` (private, mode 0600) and ``STEM.pub``; refuses to overwrite either."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    stem = Path(stem)
    if stem.suffix in (".key", ".pub"):
        stem = stem.with_suffix("")
    key_path, pub_path = stem.with_name(stem.name + ".key"), stem.with_name(stem.name + ".pub")
    for p in (key_path, pub_path):
        if p.exists() or p.is_symlink():
            raise SignatureError(f"{p} already exists; choose another name (keys are never overwritten)")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        key_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private)
        fd = os.open(pub_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(public)
    except OSError as exc:
        raise SignatureError(f"cannot write the key pair {stem}: {exc.strerror or exc}") from exc
    return key_path, pub_path


def _signed_bytes(data: dict[str, Any]) -> bytes:
    return _DOMAIN + canonical_manifest(data)


def sign_manifest_data(folder: str | os.PathLike, data: dict[str, Any], key_path: str | os.PathLike) -> str:
    """Write ``signature.json`` for the manifest ``data`` of the bundle ``folder``; returns the key id."""
    from edgekit.manifest import atomic_write_text

    key = load_private_key(key_path)
    kid = key_id(key.public_key())
    body = {
        "schema": SIGNATURE_SCHEMA,
        "algorithm": "ed25519",
        "key_id": kid,
        "signer": Path(key_path).stem,
        "manifest_sha256": hashlib.sha256(canonical_manifest(data)).hexdigest(),
        "signature": base64.b64encode(key.sign(_signed_bytes(data))).decode(),
    }
    atomic_write_text(Path(folder) / SIGNATURE_NAME, json.dumps(body, indent=2) + "\n")
    return kid


def sign_bundle(folder: str | os.PathLike, key_path: str | os.PathLike) -> str:
    """Check the bundle (manifest schema, every artifact's sha256), then sign it; returns the key id."""
    from edgekit.manifest import Manifest, read_manifest_data, verify_artifact

    folder = Path(folder)
    data = read_manifest_data(folder)
    manifest = Manifest.from_dict(data)
    for art in manifest.artifacts.values():
        if art.status != "export_failed":  # no file was written for it; the device never loads it
            verify_artifact(folder, art)
    return sign_manifest_data(folder, data, key_path)


def sign_if_configured(folder: str | os.PathLike, key_path: str | os.PathLike | None = None) -> str | None:
    """Sign ``folder`` with ``key_path`` or ``$EDGEKIT_SIGNING_KEY`` when one is set; else None."""
    key_path = key_path or os.environ.get(SIGNING_KEY_ENV) or None
    return None if key_path is None else sign_bundle(folder, key_path)


@dataclass
class Trust:
    """The outcome of :func:`check_bundle`: trusted (with the key), or why not."""

    trusted: bool
    reason: str  # "signed by NAME (key ID)" or why the bundle is not trusted
    key_id: str | None = None


def _read_signature(folder: Path) -> dict[str, Any] | None:
    path = folder / SIGNATURE_NAME
    if not path.exists() and not path.is_symlink():
        return None
    try:
        sig = json.loads(_read_small(path, "signature"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SignatureError(f"{path} is malformed ({exc})") from exc
    if (not isinstance(sig, dict) or sig.get("schema") != SIGNATURE_SCHEMA
            or sig.get("algorithm") != "ed25519"
            or not isinstance(sig.get("key_id"), str) or not isinstance(sig.get("signature"), str)):
        raise SignatureError(f"{path} is not an edgekit Ed25519 signature")
    return sig


def check_bundle(folder: str | os.PathLike, data: dict[str, Any]) -> Trust:
    """Whether the manifest ``data`` read from ``folder`` carries a valid signature by a trusted key."""
    try:
        from cryptography.exceptions import InvalidSignature
    except ImportError as exc:
        raise SignatureError("cannot check bundle signatures: the cryptography package is missing "
                             "(pip install cryptography)") from exc

    folder = Path(folder)
    try:
        sig = _read_signature(folder)
    except SignatureError as exc:
        return Trust(False, str(exc))
    if sig is None:
        return Trust(False, "it is not signed")
    keys = trusted_keys()
    kid = sig["key_id"]
    key = keys.get(kid)
    if key is None:
        return Trust(False, f"it is signed by key {kid}, which is not in the keyring ({keyring_dir()})", kid)
    try:
        raw = base64.b64decode(sig["signature"], validate=True)
        key.public_key.verify(raw, _signed_bytes(data))
    except (InvalidSignature, ValueError):
        return Trust(False, f"its signature does not match the manifest (edited after it was signed by "
                            f"{key.name}, key {kid})", kid)
    return Trust(True, f"signed by {key.name} (key {kid})", kid)


def require_trusted(folder: str | os.PathLike, data: dict[str, Any],
                    allow_unsigned: bool | None = None) -> Trust:
    """:func:`check_bundle`, raising :class:`SignatureError` when not trusted unless ``allow_unsigned``
    (default: ``$EDGEKIT_ALLOW_UNSIGNED``), in which case the caller should warn with ``trust.reason``."""
    trust = check_bundle(folder, data)
    if trust.trusted:
        return trust
    if allow_unsigned is None:
        allow_unsigned = allow_unsigned_from_env()
    if not allow_unsigned:
        raise SignatureError(
            f"refusing bundle {folder}: {trust.reason}; sign it (`edgekit sign BUNDLE --key KEY`) with a key "
            f"whose .pub is in {keyring_dir()}, or pass --allow-unsigned for development"
        )
    return trust
