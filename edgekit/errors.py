# pyright: basic
"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class EdgekitError(Exception):
    """A problem the user can fix (bad path, bad data, tampered model...)."""

    exit_code = 2


class DataError(EdgekitError):
    """The dataset or split is unusable."""


class ImageError(EdgekitError):
    """One image cannot be read or used; batches record it and carry on."""


class FileChanged(ImageError):
    """An image file's bytes are no longer those hashed for its record: reported, never recorded
    (under the old hash, a rerun would skip the picture that hash names, never read)."""


class BundleError(EdgekitError):
    """A bundle or manifest is missing, malformed, or fails its integrity check."""


class IntegrityError(BundleError):
    """An artifact's sha256 does not match the manifest."""


class SignatureError(BundleError):
    """A bundle is unsigned, signed by an untrusted key, or its signature does not match."""


class ExportError(EdgekitError):
    """A format could not be converted (unsupported op, converter failure)."""


class ValidationFailed(EdgekitError):
    """An exported format misses its accuracy bound against Keras."""


class CameraError(EdgekitError):
    """The camera or stream cannot be opened, or disappeared and did not come back."""


class RecordsError(EdgekitError):
    """The screening database cannot be used (locked, read-only, corrupt, unreachable)."""
