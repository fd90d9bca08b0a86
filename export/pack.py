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
from edgekit.manifest import MANIFEST_NAME, Artifact, Manifest, load_manifest, verify_artifact
from edgekit.safefile import check_replaceable, replace_dir

DEVICE_FORMATS = PACKED  # the rows of edgekit.formats marked packed
REPORTS = ("validation.md", "validation.json")


def pack_bundle(source: Path, out: Path, formats: tuple[str, ...] = DEVICE_FORMATS,
                replace: bool = False, replay: int = 0, seed: int = 0) -> list[str]:
    """Copy ``formats`` of the bundle ``source`` (each must be present and validated ok) with the
    manifest, labels and validation report into the new folder ``out``; returns the formats copied.

    ``replay`` > 0 also keeps the Keras model with that many of its training crops
    (:mod:`edgekit.replay`, sampled from the run's split), so ``edgekit adapt`` can start from ``out``."""
    source, out = Path(source), Path(out)
    manifest = load_manifest(source)
    if replay and "keras" not in formats:
        formats = (*formats, "keras")
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
    check_replaceable(out, replace, MANIFEST_NAME, "a bundle", BundleError, source=source)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for art in chosen.values():
            for rel in art.files:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)  # a model may sit in a subfolder
                shutil.copyfile(source / rel, tmp / rel)
                os.chmod(tmp / rel, 0o644)
        if replay:
            _add_replay(source, tmp, manifest, chosen["keras"], replay, seed)
        for name in REPORTS:
            if (source / name).is_file():
                shutil.copyfile(source / name, tmp / name)
                os.chmod(tmp / name, 0o644)
        manifest.artifacts = chosen
        manifest.training = portable_training(manifest.training, source, out)
        manifest.save(tmp)
        os.chmod(tmp, 0o755)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return list(chosen)


def _add_replay(source: Path, tmp: Path, manifest: Manifest, keras: Artifact, n: int, seed: int) -> None:
    """Write ``n`` training crops of the run ``source`` beside its Keras model in ``tmp`` and record them."""
    from edgekit.manifest import sha256_file
    from edgekit.paths import resolve_recorded
    from edgekit.replay import REPLAY_FILE, sample_training_crops, write_replay

    split_file = manifest.training.get("split_file")
    if not split_file or not resolve_recorded(split_file, source).is_file():
        raise BundleError(f"--replay needs the run's training split ({split_file or 'not recorded'}) on this "
                          "machine")
    x, y, groups = sample_training_crops(resolve_recorded(split_file, source), manifest.labels,
                                         manifest.preprocessing, n, seed)
    write_replay(tmp / REPLAY_FILE, x, y, groups)
    os.chmod(tmp / REPLAY_FILE, 0o644)
    keras.extra_files = {**keras.extra_files, REPLAY_FILE: sha256_file(tmp / REPLAY_FILE)}
    manifest.training["replay"] = {
        "file": REPLAY_FILE, "crops": int(len(y)), "patients": int(len(set(groups.tolist()))),
        "per_class": {label: int((y == k).sum()) for k, label in enumerate(manifest.labels)},
        "from": "training part of the split (stratified by class), raw crops (no stain normalization)",
        "encoding": "WebP mosaic, quality 95",
        "seed": seed,
    }


def portable_training(training: dict, source: Path, out: Path) -> dict:
    """The training record with its paths as seen from ``out`` (:func:`edgekit.paths.portable_path`):
    a packed bundle travels, so it names no path of the machine that packed it."""
    from edgekit.paths import portable_command, portable_path, resolve_recorded

    training = dict(training)
    for key in ("split_file", "data_root"):
        if isinstance(training.get(key), str) and training[key]:
            training[key] = portable_path(resolve_recorded(training[key], source), out)
    if isinstance(training.get("command"), str):
        training["command"] = portable_command(training["command"].split(), out)
    return training
