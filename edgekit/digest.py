# pyright: basic
"""SHA-256 for everything the device path hashes (content hashes, model files, manifests), from
CPython's own SHA-2 module rather than ``hashlib``'s OpenSSL one: the same digests, without loading
libcrypto (~3.4 MB of resident pages and ~12 ms of a cold start; ~65 us more CPU per 25 KB crop).
``hashlib`` is the fallback where the interpreter was built without its own SHA-2."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Protocol, cast


class Digest(Protocol):
    """What the device path uses of a ``hashlib``-style hash object."""

    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...

    def hexdigest(self) -> str: ...


def _builtin_sha256() -> Callable[..., Digest]:
    for name in ("_sha2", "_sha256"):  # CPython >= 3.12, then 3.10-3.11
        try:
            return cast("Callable[..., Digest]", importlib.import_module(name).sha256)
        except (ImportError, AttributeError):
            continue
    from hashlib import sha256 as fallback

    return fallback


_SHA256 = _builtin_sha256()


def sha256(data: bytes = b"") -> Digest:
    """A new SHA-256 hash object fed ``data`` (``hashlib.sha256``'s digests)."""
    return _SHA256(data)
