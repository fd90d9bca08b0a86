"""``edgekit keygen``, ``edgekit sign``, ``edgekit verify``: managing who a device trusts. Light at
import (click only)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("name", type=click.Path(path_type=Path))
@click.option("--trust", "add_to_keyring", is_flag=True,
              help="Also copy NAME.pub into this machine's keyring, so bundles it signs load here.")
def keygen(name: Path, add_to_keyring: bool) -> None:
    """Create a signing key pair NAME.key (secret: keep it off devices) and NAME.pub (copy it into the
    keyring of every device that should trust bundles signed with it)."""
    import shutil

    from edgekit.errors import SignatureError
    from edgekit.signing import generate_keypair, key_id, keyring_dir, load_public_key

    key_path, pub_path = generate_keypair(name)
    kid = key_id(load_public_key(pub_path))
    click.echo(f"wrote {key_path} (private: keep it secret) and {pub_path} (public), key id {kid}")
    if add_to_keyring:
        ring = keyring_dir()
        target = ring / pub_path.name
        if target.exists():
            raise SignatureError(f"{target} already exists in the keyring; copy {pub_path} by hand")
        ring.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pub_path, target)
        click.echo(f"trusted here: {target}")


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key_path", type=click.Path(path_type=Path), envvar="EDGEKIT_SIGNING_KEY",
              required=True, help="Private key from `edgekit keygen` (default: $EDGEKIT_SIGNING_KEY).")
def sign(bundle: Path, key_path: Path) -> None:
    """Sign a bundle: checks its manifest and every model file's sha256, then writes signature.json."""
    from edgekit.signing import sign_bundle

    kid = sign_bundle(bundle, key_path)
    click.echo(f"signed {bundle} with key {kid}")


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
def verify(bundle: Path) -> None:
    """Say whether a bundle is signed by a trusted key and its model files match; exit 1 when not."""
    from edgekit.manifest import Manifest, read_manifest_data, verify_artifact
    from edgekit.signing import check_bundle

    data = read_manifest_data(bundle)
    trust = check_bundle(bundle, data)
    manifest = Manifest.from_dict(data)
    for art in manifest.artifacts.values():
        if art.status != "export_failed":
            verify_artifact(bundle, art)
    click.echo(f"{bundle}: {'trusted' if trust.trusted else 'NOT trusted'}: {trust.reason}; "
               f"{len(manifest.artifacts)} model file(s) match their sha256")
    gate = manifest.domain.gate if manifest.domain is not None else None
    if gate is not None:
        click.echo(gate.summary() + ("" if gate.passed else ": every result of it says NOT VALIDATED"))
    if not trust.trusted:
        raise SystemExit(1)
