# pyright: basic
"""Signed bundles: an Ed25519 signature over the canonical manifest, checked on every load.

The manifest lists every model file with its sha256, so signing the manifest signs the whole bundle:
labels, preprocessing, thresholds, the patient rule and the model bytes. ``signature.json`` next to
``manifest.json`` holds the signature and the signing key's id. A bundle is *trusted* when its
signature verifies against a public key edgekit trusts:

- the project's own keys shipped in the package (``edgekit/keys/*.pub``: the default model), and
- the site's keyring, a folder of ``*.pub`` files the user controls: ``$EDGEKIT_KEYRING``, else
  ``$XDG_CONFIG_HOME/edgekit/keys`` (``~/.config/edgekit/keys``).

On top of the signature, a trust policy (``keys/trust.json`` in the package, extended by the
keyring's own ``trust.json``) says which releases each key may still vouch for and what is withdrawn:

- ``min_release``: per key id, the oldest release version (the manifest's ``release``, dotted
  integers such as ``2026.12.05``) still accepted: an older, validly signed bundle is a rollback;
- ``retired_keys``: keys that sign nothing any more (a lost key); bundles they signed are refused, but
  their signatures still prove that a bundle is intact when a maintainer re-signs it;
- ``revoked_keys``: keys whose signatures prove nothing (a leaked key);
- ``revoked_bundles``: a manifest's canonical sha256 or a model file's sha256, refused everywhere.

A site can only add to the package's policy (a higher minimum, more revocations), never remove.

Keys are PEM files (private: PKCS#8, mode 0600; public: SubjectPublicKeyInfo). The cryptography comes
from the ``cryptography`` package; nothing here is hand-rolled. Light: imported by the device runtime,
``cryptography`` is imported inside the functions that need it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.digest import sha256
from edgekit.errors import BundleError, EdgekitError, SignatureError
from edgekit.manifest_schema import RELEASE_PATTERN

SIGNATURE_NAME = "signature.json"
SIGNATURE_SCHEMA = "edgekit.signature/1"
_DOMAIN = b"edgekit.bundle-signature/1\n"  # what is signed: this prefix + the canonical manifest
ALLOW_UNSIGNED_ENV = "EDGEKIT_ALLOW_UNSIGNED"
KEYRING_ENV = "EDGEKIT_KEYRING"
SIGNING_KEY_ENV = "EDGEKIT_SIGNING_KEY"
PACKAGE_KEYS = Path(__file__).resolve().parent / "keys"
_MAX_KEY_BYTES = 16 * 1024
MAX_REASON_CHARS = 500  # a re-signing reason: one line shown with every check of the bundle
TRUST_NAME = "trust.json"
TRUST_SCHEMA = "edgekit.trust/1"
_MAX_TRUST_BYTES = 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")


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
    return sha256(public_key.public_bytes_raw()).hexdigest()[:16]


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
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"{path} is not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is not an Ed25519 public key")
    return key


@dataclass
class TrustedKey:
    """A trusted Ed25519 public key: its id, its file's name and place, its raw bytes."""

    key_id: str
    name: str  # the file's stem
    source: Path
    raw: bytes  # the 32 raw Ed25519 key bytes

    @property
    def public_key(self) -> Any:
        """The key as a ``cryptography`` object (imported only when a signature must be checked)."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        return Ed25519PublicKey.from_public_bytes(self.raw)


def trusted_keys() -> dict[str, TrustedKey]:
    """Every trusted public key by key id: the package's keys, then the site keyring's."""
    keys: dict[str, TrustedKey] = {}
    for folder in (PACKAGE_KEYS, keyring_dir()):
        if not folder.is_dir():
            continue
        for pub in sorted(folder.glob("*.pub")):
            try:
                raw = _ed25519_raw(_read_small(pub, "public key"))
                if raw is None:  # another PEM layout: cryptography's loader parses (or refuses) it
                    raw = load_public_key(pub).public_bytes_raw()
            except EdgekitError as exc:  # one bad file must not stop verification with the good keys
                _skipped_key(pub, exc)
                continue
            kid = sha256(raw).hexdigest()[:16]  # = key_id(), without loading the key object
            keys.setdefault(kid, TrustedKey(kid, pub.stem, pub, raw))
    return keys


_SKIPPED_KEYS: set[Path] = set()  # said once per process: a command reads the keyring several times


def _skipped_key(pub: Path, exc: Exception) -> None:
    """Say once, on stderr, that a key file is left out of the keyring: it trusts nothing."""
    if pub not in _SKIPPED_KEYS:
        _SKIPPED_KEYS.add(pub)
        print(f"warning: key file skipped, nothing it signed is trusted: {exc}", file=sys.stderr)


def key_pair_paths(stem: str | os.PathLike) -> tuple[Path, Path]:
    """``(STEM.key, STEM.pub)`` for a key name given with or without either suffix."""
    stem = Path(stem)
    if stem.suffix in (".key", ".pub"):
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + ".key"), stem.with_name(stem.name + ".pub")


def generate_keypair(stem: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``STEM.key`` (private, mode 0600) and ``STEM.pub``; refuses to overwrite either."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key_path, pub_path = key_pair_paths(stem)
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


def parse_release(value: Any, what: str = "release") -> tuple[int, ...]:
    """A release version (dotted integers, e.g. ``2026.12.05``) as a tuple that compares in order."""
    if not isinstance(value, str) or not RELEASE_PATTERN.fullmatch(value):
        raise SignatureError(f"{what} must be dotted integers such as 2026.12.05, not {value!r}")
    parts = tuple(int(p) for p in value.split("."))
    return parts + (0,) * (4 - len(parts))


def today_release() -> str:
    """The release version ``edgekit sign`` stamps on a manifest that has none: today's UTC date."""
    return time.strftime("%Y.%m.%d", time.gmtime())


@dataclass
class TrustPolicy:
    """Which releases each key may vouch for, and what is withdrawn (see the module docstring)."""

    min_release: dict[str, str] = field(default_factory=dict)  # key id -> oldest accepted release
    retired_keys: dict[str, str] = field(default_factory=dict)  # key id -> why
    revoked_keys: dict[str, str] = field(default_factory=dict)  # key id -> why
    revoked_bundles: dict[str, str] = field(default_factory=dict)  # manifest or model sha256 -> why
    sources: list[Path] = field(default_factory=list)

    def merge(self, path: Path, d: Any) -> None:
        """Add the policy file ``path``'s parsed JSON ``d``: only ever stricter."""
        def fail(msg: str) -> SignatureError:
            return SignatureError(f"trust policy {path} is malformed: {msg}")

        if not isinstance(d, dict) or d.get("schema") != TRUST_SCHEMA:
            raise fail(f'it must be a JSON object with "schema": "{TRUST_SCHEMA}"')
        keys = d.get("keys", {})
        if not isinstance(keys, dict):
            raise fail('"keys" must be an object: key id -> {"min_release": ...}')
        for kid, entry in keys.items():
            if not (isinstance(kid, str) and _KEY_ID.fullmatch(kid)) or not isinstance(entry, dict):
                raise fail(f"keys: {kid!r} must be a 16-hex-digit key id with an object")
            rel = entry.get("min_release")
            if rel is None:
                continue
            try:
                parse_release(rel, f"keys.{kid}.min_release")
            except SignatureError as exc:
                raise fail(str(exc)) from exc
            old = self.min_release.get(kid)
            if old is None or parse_release(rel) > parse_release(old):
                self.min_release[kid] = rel
        for name, pattern, target in (("retired_keys", _KEY_ID, self.retired_keys),
                                      ("revoked_keys", _KEY_ID, self.revoked_keys),
                                      ("revoked_bundles", _SHA256, self.revoked_bundles)):
            entries = d.get(name, {})
            if not isinstance(entries, dict):
                raise fail(f'"{name}" must be an object: id -> why')
            for k, why in entries.items():
                if not (isinstance(k, str) and pattern.fullmatch(k)) or not isinstance(why, str):
                    raise fail(f"{name}: {k!r} is not a lowercase hex id with a reason")
                target.setdefault(k, why)
        self.sources.append(path)


def trust_policy() -> TrustPolicy:
    """The package's trust policy extended by the keyring's ``trust.json`` (when there is one). A policy
    file that cannot be read is an error, never ignored: a dropped revocation would pass silently."""
    policy = TrustPolicy()
    if keyring_dir().exists() and not keyring_dir().is_dir():  # its trust.json unreadable: as above
        raise SignatureError(f"the keyring {keyring_dir()} is not a folder: its keys and"
                             " trust policy cannot be read")
    ring = keyring_dir() / TRUST_NAME
    for path in (PACKAGE_KEYS / TRUST_NAME, ring):
        if path is ring and not (path.exists() or path.is_symlink()):
            continue
        try:
            d = json.loads(_read_small_trust(path))
        except (ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 or JSON, a 5000-digit number
            raise SignatureError(f"trust policy {path} is malformed: {exc}") from exc
        policy.merge(path, d)
    return policy


def _read_small_trust(path: Path) -> bytes:
    from edgekit.safefile import read_regular_bytes

    return read_regular_bytes(path, _MAX_TRUST_BYTES, "trust policy", SignatureError)


def manifest_sha256(data: dict[str, Any]) -> str:
    """The bundle's identity: the sha256 of its canonical manifest (what revocation lists name)."""
    return sha256(canonical_manifest(data)).hexdigest()


def _revoked_bundle(data: dict[str, Any], policy: TrustPolicy) -> str | None:
    """Why the bundle (its manifest, or any model file it lists) is revoked, else None."""
    if not policy.revoked_bundles:
        return None
    sha = manifest_sha256(data)
    if sha in policy.revoked_bundles:
        return f"bundle {sha[:16]} is revoked: {policy.revoked_bundles[sha]}"
    arts = data.get("artifacts")
    for name, art in (arts.items() if isinstance(arts, dict) else ()):
        art_sha = art.get("sha256") if isinstance(art, dict) else None
        if isinstance(art_sha, str) and art_sha in policy.revoked_bundles:  # a tampered list: unhashable
            return f"its {name} model ({art_sha[:16]}) is revoked: {policy.revoked_bundles[art_sha]}"
    return None


def _sections(data: dict[str, Any]) -> dict[str, str]:
    """Short hashes of each manifest section (each model entry on its own), kept beside the signature
    so that a mismatch can say what changed. Not signed themselves: a hint, never a verdict."""
    out: dict[str, str] = {}
    for k, v in data.items():
        items = v.items() if k == "artifacts" and isinstance(v, dict) else [(None, v)]
        for sub, val in items:
            name = k if sub is None else f"{k}.{sub}"
            out[name] = sha256(canonical_manifest({"v": val})).hexdigest()[:16]
    return out


def changed_sections(sig: dict[str, Any], data: dict[str, Any]) -> str:
    """What changed in the manifest since ``sig`` was made, in words."""
    before = sig.get("sections")
    if not isinstance(before, dict):
        return "which part cannot be told (the signature predates section hashes)"
    now = _sections(data)
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if not changed:
        return "the manifest's sections all match"
    return "changed since signing: " + ", ".join(changed)


def _signed_bytes(data: dict[str, Any]) -> bytes:
    return _DOMAIN + canonical_manifest(data)


def sign_manifest_data(folder: str | os.PathLike, data: dict[str, Any], key_path: str | os.PathLike,
                       unverified: dict[str, Any] | None = None) -> str:
    """Write ``signature.json`` for the manifest ``data`` of the bundle ``folder``; returns the key id.
    ``unverified``: the reason and problems when a maintainer re-signs a bundle that did not verify."""
    from edgekit.manifest import atomic_write_text

    key = load_private_key(key_path)
    kid = key_id(key.public_key())
    body = {
        "schema": SIGNATURE_SCHEMA,
        "algorithm": "ed25519",
        "key_id": kid,
        "signer": Path(key_path).stem,
        "manifest_sha256": manifest_sha256(data),
        "signature": base64.b64encode(key.sign(_signed_bytes(data))).decode(),
        "sections": _sections(data),
    }
    if unverified:
        body["resigned_unverified"] = unverified
    atomic_write_text(Path(folder) / SIGNATURE_NAME, json.dumps(body, indent=2) + "\n")
    return kid


def signing_problems(folder: str | os.PathLike, data: dict[str, Any]) -> tuple[list[str], list[str], str]:
    """Whether the bundle may be signed again as it is: (fatal, problems, what it was). Fatal: a model
    file that does not match its sha256, a revoked bundle (no signature makes those right). Problems: a
    signature that does not match or cannot be checked, or a revoked signer. A signature by a retired key
    that still matches is no problem: it proves the bundle is intact."""
    from edgekit.manifest import Manifest, verify_artifact

    folder = Path(folder)
    fatal: list[str] = []
    manifest = Manifest.from_dict(data)
    for art in manifest.artifacts.values():
        if art.status != "export_failed":  # no file was written for it; the device never loads it
            try:
                verify_artifact(folder, art)
            except BundleError as exc:
                fatal.append(str(exc))
    policy = trust_policy()
    revoked = _revoked_bundle(data, policy)
    if revoked:
        fatal.append(revoked)
    try:
        sig = _read_signature(folder)
    except SignatureError as exc:
        return fatal, [str(exc)], "signed, unreadably"
    if sig is None:
        return fatal, [], "unsigned"
    kid = sig["key_id"]
    if kid in policy.revoked_keys:
        return fatal, [f"it is signed by revoked key {kid} ({policy.revoked_keys[kid]})"], f"signed by {kid}"
    key = trusted_keys().get(kid)
    if key is None:
        return fatal, [f"it is signed by key {kid}, which is not in the keyring ({keyring_dir()}): its "
                       "signature cannot be checked"], f"signed by {kid}"
    if not _signature_matches(key, sig, data):
        return fatal, [f"its signature by {key.name} (key {kid}) does not match the manifest: "
                       f"{changed_sections(sig, data)}"], f"signed by {key.name}"
    retired = " (retired key; its signature still matches)" if kid in policy.retired_keys else ""
    return fatal, [], f"signed by {key.name}, key {kid}, release {data.get('release') or 'none'}{retired}"


def _signature_matches(key: TrustedKey, sig: dict[str, Any], data: dict[str, Any]) -> bool:
    """Whether ``sig`` is ``key``'s valid signature of ``data``. A verification that succeeded is
    remembered (:func:`_verified_marker`), so a device start usually skips importing ``cryptography``."""
    try:
        signature = base64.b64decode(sig["signature"], validate=True)
    except ValueError:
        return False
    message = _signed_bytes(data)
    # Whoever can write the cache could plant a marker; that adds nothing for a key whose folder this
    # user may write anyway (they could add a key), but would weaken a keyring kept read-only (a
    # site's protected keyring, a system-wide install): those keys are always verified afresh.
    cached = os.access(key.source.parent, os.W_OK)
    marker = _verified_marker(key.raw, signature, message) if cached else None
    if marker is not None and marker.is_file():
        return True
    from cryptography.exceptions import InvalidSignature

    try:
        key.public_key.verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    if marker is not None:
        try:
            marker.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            marker.touch()
        except OSError:
            pass  # a read-only cache only costs a verification per start
    return True


def _verified_marker(raw_key: bytes, signature: bytes, message: bytes) -> Path:
    """The cache file that says this exact (key, signature, signed manifest) triple verified before:
    named by the sha256 of all three, so any change to the manifest (and through its sha256s, to any
    artifact), the signature or the key misses it and is verified afresh. Artifacts themselves are
    always hashed against the manifest when loaded. The cache is the user's own (``$EDGEKIT_CACHE``,
    as for the model probe), no more writable by others than their keyring."""
    from edgekit.device.probe import cache_dir

    h = sha256(b"edgekit-verified-v1\0")
    for part in (raw_key, signature, message):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return cache_dir() / "verified" / h.hexdigest()


@dataclass
class Signed:
    """What :func:`sign_bundle` did."""

    key_id: str
    release: str
    was: str  # what the bundle was before: "unsigned", "signed by NAME ..."
    notes: list[str] = field(default_factory=list)  # the release stamped, problems signed over

    def summary(self) -> str:
        return "; ".join([f"release {self.release}", f"was {self.was}", *self.notes])


def check_resign_reason(reason: str | None) -> None:
    """A re-signing reason is kept in signature.json and shown by every check of the bundle: one
    printable line, not blank, at most :data:`MAX_REASON_CHARS`."""
    from edgekit.outputs import control_character

    if reason is None:
        return
    if not reason.strip():
        raise SignatureError("--resign-unverified needs a reason: say why the bundle is vouched for")
    if len(reason) > MAX_REASON_CHARS:
        raise SignatureError(f"the re-signing reason is {len(reason)} characters long "
                             f"(at most {MAX_REASON_CHARS})")
    if (bad := control_character(reason)) is not None:
        raise SignatureError(f"the re-signing reason contains a control character ({bad!r}); "
                             "use one printable line")


def check_signable(folder: str | os.PathLike, resign_reason: str | None) -> tuple[str, list[str]]:
    """Refuse (:class:`SignatureError`) to sign anything made from ``folder`` when it does not verify,
    unless ``resign_reason`` names why; returns (what it was, problems signed over)."""
    from edgekit.manifest import read_manifest_data

    check_resign_reason(resign_reason)
    data = read_manifest_data(folder)
    fatal, problems, was = signing_problems(folder, data)
    if fatal:  # a signature cannot make a wrong model file or a revoked bundle right
        raise SignatureError(f"refusing to sign {folder}: {'; '.join(fatal)}")
    if problems and not resign_reason:
        raise SignatureError(
            f"refusing to sign {folder}: {'; '.join(problems)}. Find out what changed and why; to vouch "
            "for it anyway, pass --resign-unverified REASON")
    return was, problems


def sign_bundle(folder: str | os.PathLike, key_path: str | os.PathLike, resign_reason: str | None = None,
                release: str | None = None, source_problems: list[str] | None = None) -> Signed:
    """Check the bundle (manifest schema, every model file's sha256, its existing signature), give it a
    release version (``release``, else the one it has, else today's date), then sign it.
    ``source_problems``: what did not verify in the bundle this one was made from (pack, export)."""
    from edgekit.manifest import atomic_write_text, read_manifest_data

    folder = Path(folder)
    was, problems = check_signable(folder, resign_reason)
    data = read_manifest_data(folder)
    notes: list[str] = []
    current: str | None = data.get("release")
    if release is None:
        release = current if current is not None else today_release()
        if current is None:
            notes.append("release stamped (the manifest had none)")
    elif release != current:
        notes.append(f"release set (was {current or 'none'})")
    parse_release(release)
    kid = key_id(load_private_key(key_path).public_key())
    floor = trust_policy().min_release.get(kid)
    if floor is not None and parse_release(release) < parse_release(floor):
        raise SignatureError(f"refusing to sign {folder} as release {release}: this install accepts key "
                             f"{kid} only from release {floor} (the bundle would be refused as a rollback)")
    if data.get("release") != release:
        data["release"] = release
        atomic_write_text(folder / "manifest.json", json.dumps(data, indent=2) + "\n")
    unverified = None
    if problems:
        notes.append(f"signed UNVERIFIED ({resign_reason}): {'; '.join(problems)}")
    problems = [*problems, *(source_problems or [])]
    if problems:
        unverified = {"reason": resign_reason, "problems": problems}
    sign_manifest_data(folder, data, key_path, unverified)
    return Signed(kid, release, was, notes)


def sign_if_configured(folder: str | os.PathLike, key_path: str | os.PathLike | None = None,
                       resign_reason: str | None = None, source_problems: list[str] | None = None,
                       ) -> Signed | None:
    """Sign ``folder`` with ``key_path`` or ``$EDGEKIT_SIGNING_KEY`` when one is set; else None."""
    key_path = signing_key_from(key_path)
    if key_path is None:
        return None
    return sign_bundle(folder, key_path, resign_reason, source_problems=source_problems)


def signing_key_from(key_path: str | os.PathLike | None) -> str | os.PathLike | None:
    """The signing key: ``key_path``, else ``$EDGEKIT_SIGNING_KEY``, else None."""
    return key_path or os.environ.get(SIGNING_KEY_ENV) or None


@dataclass
class Trust:
    """The outcome of :func:`check_bundle`: trusted (with the key), or why not. ``refused``: revoked,
    retired or rolled back, which ``--allow-unsigned`` does not let through."""

    trusted: bool
    reason: str  # "signed by NAME (key ID), release R" or why the bundle is not trusted
    key_id: str | None = None
    refused: bool = False
    release: str | None = None


def _read_signature(folder: Path) -> dict[str, Any] | None:
    path = folder / SIGNATURE_NAME
    if not path.exists() and not path.is_symlink():
        return None
    try:
        sig = json.loads(_read_small(path, "signature"))
    except (ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 or JSON, a 5000-digit number
        raise SignatureError(f"{path} is malformed ({exc})") from exc
    if (not isinstance(sig, dict) or sig.get("schema") != SIGNATURE_SCHEMA
            or sig.get("algorithm") != "ed25519"
            or not isinstance(sig.get("key_id"), str) or not isinstance(sig.get("signature"), str)):
        raise SignatureError(f"{path} is not an edgekit Ed25519 signature")
    return sig


def check_bundle(folder: str | os.PathLike, data: dict[str, Any]) -> Trust:
    """Whether the manifest ``data`` read from ``folder`` carries a valid signature by a trusted key, for a
    release that key may still vouch for, and is not revoked."""
    import importlib.util

    if importlib.util.find_spec("cryptography") is None:  # found, not imported: a cached check needs none
        raise SignatureError("cannot check bundle signatures: the cryptography package is missing "
                             "(pip install cryptography)")

    folder = Path(folder)
    policy = trust_policy()
    release = data.get("release") if isinstance(data.get("release"), str) else None
    revoked = _revoked_bundle(data, policy)
    if revoked:
        return Trust(False, revoked, refused=True, release=release)
    try:
        sig = _read_signature(folder)
    except SignatureError as exc:
        return Trust(False, str(exc), release=release)
    if sig is None:
        return Trust(False, "it is not signed", release=release)
    kid = sig["key_id"]
    if kid in policy.revoked_keys:
        why = policy.revoked_keys[kid]
        return Trust(False, f"it is signed by revoked key {kid}: {why}", kid, True, release)
    key = trusted_keys().get(kid)
    if key is None:
        return Trust(False, f"it is signed by key {kid}, which is not in the keyring ({keyring_dir()})", kid,
                     release=release)
    if not _signature_matches(key, sig, data):
        return Trust(False, f"its signature does not match the manifest (edited after it was signed by "
                            f"{key.name}, key {kid}; {changed_sections(sig, data)})", kid, release=release)
    if kid in policy.retired_keys:
        return Trust(False, f"it is signed by retired key {key.name} ({kid}): {policy.retired_keys[kid]}; "
                            "use a copy signed by a current key (`edgekit trust verify --show-keys`)",
                     kid, True, release)
    floor = policy.min_release.get(kid)
    if floor is not None:
        try:
            ok = release is not None and parse_release(release) >= parse_release(floor)
        except SignatureError:
            ok = False
        if not ok:
            why = (f"it is release {release or '(none)'} signed by {key.name} (key {kid}), older than "
                   f"release {floor}, the oldest this install accepts from that key: a rollback")
            return Trust(False, why, kid, True, release)
    return Trust(True, f"signed by {key.name} (key {kid}), release {release or '(none)'}", kid,
                 release=release)


def require_trusted(folder: str | os.PathLike, data: dict[str, Any],
                    allow_unsigned: bool | None = None) -> Trust:
    """:func:`check_bundle`, raising :class:`SignatureError` when not trusted unless ``allow_unsigned``
    (default: ``$EDGEKIT_ALLOW_UNSIGNED``), in which case the caller should warn with ``trust.reason``.
    A revoked, retired or rolled-back bundle is refused even then."""
    trust = check_bundle(folder, data)
    if trust.trusted:
        return trust
    if trust.refused:
        raise SignatureError(f"refusing bundle {folder}: {trust.reason}")
    if allow_unsigned is None:
        allow_unsigned = allow_unsigned_from_env()
    if not allow_unsigned:
        raise SignatureError(
            f"refusing bundle {folder}: {trust.reason}; sign it (`edgekit trust sign BUNDLE --key KEY`) with "
            f"a key whose .pub is in {keyring_dir()}, or pass --allow-unsigned for development"
        )
    return trust


def key_table() -> list[dict[str, str]]:
    """Every key this install knows, where it comes from, what it may sign (``verify --show-keys``)."""
    policy = trust_policy()
    rows = []
    known = trusted_keys()
    for kid in sorted(set(known) | set(policy.retired_keys) | set(policy.revoked_keys)):
        k = known.get(kid)
        if kid in policy.revoked_keys:
            status = f"REVOKED: {policy.revoked_keys[kid]}"
        elif kid in policy.retired_keys:
            status = f"RETIRED: {policy.retired_keys[kid]}"
        elif k is None:
            continue
        else:
            floor = policy.min_release.get(kid)
            status = f"trusted from release {floor}" if floor else "trusted (any release)"
        if k is None:
            source = "(no .pub here)"
        else:
            source = "package" if k.source.parent == PACKAGE_KEYS else f"keyring {k.source.parent}"
        rows.append({"key_id": kid, "name": k.name if k else "?", "source": source, "status": status})
    return rows
