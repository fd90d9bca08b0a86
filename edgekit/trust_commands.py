# pyright: basic
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
    """Create a signing key pair: NAME.key and NAME.pub.

    Create a signing key pair NAME.key (secret: keep it off devices) and NAME.pub (copy it into the
    keyring of every device that should trust bundles signed with it)."""
    import shutil

    from edgekit.errors import SignatureError
    from edgekit.signing import generate_keypair, key_id, key_pair_paths, keyring_dir, load_public_key

    ring = keyring_dir()
    target = ring / key_pair_paths(name)[1].name
    if add_to_keyring and (target.exists() or target.is_symlink()):  # before any key is written
        raise SignatureError(f"this machine already trusts a key named {target.name} ({target}); "
                             "choose another NAME, or remove that file if it is no longer wanted")
    if add_to_keyring and (ring.exists() or ring.is_symlink()) and not ring.is_dir():
        raise SignatureError(f"the keyring {ring} is not a folder: nothing written")
    key_path, pub_path = generate_keypair(name)
    kid = key_id(load_public_key(pub_path))
    click.echo(f"wrote {key_path} (private: keep it secret) and {pub_path} (public), key id {kid}")
    if add_to_keyring:
        ring.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pub_path, target)
        click.echo(f"trusted here: {target}")


resign_option = click.option(
    "--resign-unverified", "resign_reason", metavar="REASON", default=None,
    help="Sign although the bundle's existing signature does not verify (edited, or by a key this "
         "machine cannot check), naming why; the reason is kept in signature.json.")


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key_path", type=click.Path(path_type=Path), envvar="EDGEKIT_SIGNING_KEY",
              required=True, help="Private key from `edgekit trust keygen` (default: $EDGEKIT_SIGNING_KEY).")
@click.option("--release", default=None, metavar="VERSION",
              help="Release version to sign as (dotted integers). Default: the manifest's own, else today's "
                   "UTC date (2026.12.05).")
@resign_option
def sign(bundle: Path, key_path: Path, release: str | None, resign_reason: str | None) -> None:
    """Sign a bundle, after checking everything it holds.

    Sign a bundle: checks its manifest, every model file's sha256 and its existing signature (it signs
    only what verifies), gives it a release version, then writes signature.json."""
    from edgekit.signing import sign_bundle

    done = sign_bundle(bundle, key_path, resign_reason, release)
    click.echo(f"signed {bundle} with key {done.key_id}: {done.summary()}")


@click.command()
@click.argument("bundle", required=False, type=click.Path(path_type=Path))
@click.option("--show-keys", is_flag=True,
              help="List every key this install knows (package and keyring), what each may sign, and "
                   "the revoked bundles.")
def verify(bundle: Path | None, show_keys: bool) -> None:
    """Say whether a bundle is signed by a key this device trusts.

    Say whether a bundle is signed by a trusted key for a release it accepts, is not revoked, and its
    model files match; exit 1 when not."""
    from edgekit.manifest import Manifest, read_manifest_data, verify_artifact
    from edgekit.signing import check_bundle, key_table, manifest_sha256, trust_policy

    if show_keys:
        for row in key_table():
            click.echo(f"{row['key_id']}  {row['name']}  [{row['source']}]  {row['status']}")
        policy = trust_policy()
        for sha, why in sorted(policy.revoked_bundles.items()):
            click.echo(f"revoked bundle {sha}: {why}")
        click.echo(f"policy: {', '.join(str(p) for p in policy.sources)}")
    if bundle is None:
        if not show_keys:
            raise click.UsageError("give a BUNDLE to verify, or --show-keys")
        return
    data = read_manifest_data(bundle)
    trust = check_bundle(bundle, data)
    manifest = Manifest.from_dict(data)
    for art in manifest.artifacts.values():
        if art.status != "export_failed":
            verify_artifact(bundle, art)
    click.echo(f"{bundle}: {'trusted' if trust.trusted else 'NOT trusted'}: {trust.reason}; "
               f"{len(manifest.artifacts)} model file(s) match their sha256; bundle sha256 "
               f"{manifest_sha256(data)}")
    gate = manifest.domain.gate if manifest.domain is not None else None
    if gate is not None:
        click.echo(gate.summary() + ("" if gate.passed else ": every result of it says NOT VALIDATED"))
        from edgekit.site_gate import gate_advice

        for line in gate_advice(manifest):
            click.echo(line)
    if not trust.trusted:
        raise SystemExit(1)
