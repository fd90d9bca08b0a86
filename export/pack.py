"""A device bundle: a copy of a bundle holding only the chosen, verified formats (no Keras model).

This is what goes onto a Pi or phone, and what ships as edgekit's default model. Light: no
TensorFlow; every copied file is checked against its sha256 first, and the folder is written
atomically (a temporary folder renamed into place)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from edgekit.errors import BundleError
from edgekit.formats import PACKED
from edgekit.manifest import load_manifest, verify_artifact

DEVICE_FORMATS = PACKED  # the rows of edgekit.formats marked packed
REPORTS = ("validation.md", "validation.json")


def pack_bundle(source: Path, out: Path, formats: tuple[str, ...] = DEVICE_FORMATS,
                replace: bool = False) -> list[str]:
    """Copy ``formats`` of the bundle ``source`` (each must be present and validated ok) with the
    manifest, labels and validation report into the new folder ``out``; returns the formats copied."""
    source, out = Path(source), Path(out)
    manifest = load_manifest(source)
    chosen = {}
    for fmt in formats:
        art = manifest.artifacts.get(fmt)
        if art is None:
            have = ", ".join(sorted(manifest.artifacts))
            raise BundleError(f"{source} has no {fmt} model (it has: {have})")
        if art.status != "ok":
            raise BundleError(f"{fmt} in {source} is marked {art.status}; only validated formats are packed")
        verify_artifact(source, art)
        chosen[fmt] = art
    if out.exists() and not replace:
        raise BundleError(f"{out} already exists (use --replace to overwrite it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for art in chosen.values():
            for rel in art.files:
                shutil.copyfile(source / rel, tmp / rel)
                os.chmod(tmp / rel, 0o644)
        for name in REPORTS:
            if (source / name).is_file():
                shutil.copyfile(source / name, tmp / name)
                os.chmod(tmp / name, 0o644)
        manifest.artifacts = chosen
        manifest.save(tmp)
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return list(chosen)
