"""Key rotation, versioned trust and revocation (issues 27.3, 30.1), and signing only what verifies
(30.2). No private key of the project is needed: the shipped default is checked with its public key."""

from __future__ import annotations

import base64
import json
import shutil

import pytest
from bundle_factory import TEST_KEY
from click.testing import CliRunner
from device_helpers import CELLS, GOLDEN, golden_copy

from edgekit.cli import main
from edgekit.device.runtime import default_bundle_dir, load_classifier
from edgekit.errors import SignatureError
from edgekit.manifest import read_manifest_data
from edgekit.signing import (
    _DOMAIN,
    PACKAGE_KEYS,
    SIGNATURE_NAME,
    canonical_manifest,
    check_bundle,
    generate_keypair,
    key_id,
    load_public_key,
    manifest_sha256,
    sign_bundle,
    trust_policy,
)

FIXTURES = GOLDEN.parent
PROJECT_PUB = PACKAGE_KEYS / "edgekit-project-2026-12.pub"
RETIRED = "a129e6a1d68156e0"
CROP = sorted(CELLS.iterdir())[0]


@pytest.fixture
def strict(monkeypatch):
    monkeypatch.delenv("EDGEKIT_ALLOW_UNSIGNED", raising=False)


@pytest.fixture
def ring(tmp_path, monkeypatch):
    """A keyring of this test's own, trusting the test key (the golden bundle's signer)."""
    path = tmp_path / "ring"
    path.mkdir()
    shutil.copy(TEST_KEY.with_suffix(".pub"), path)
    monkeypatch.setenv("EDGEKIT_KEYRING", str(path))
    return path


def _site_policy(ring, **entries) -> None:
    (ring / "trust.json").write_text(json.dumps({"schema": "edgekit.trust/1", **entries}))


def _edit(bundle, change) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def _one_line_refusal(res, *words) -> None:
    assert res.exit_code == 2, res.output
    assert res.stdout == "" and res.stderr.count("\n") == 1 and "Traceback" not in res.output, res.output
    for w in words:
        assert w in res.stderr, res.stderr


def _classify(bundle, *extra):
    return CliRunner().invoke(main, ["classify", str(CROP), "-m", str(bundle), "--format", "jsonl", *extra])


# ------------------------------------------------------------------------------------- key rotation


def test_shipped_default_verifies_with_the_pinned_project_key_alone(strict, tmp_path, monkeypatch):
    """The package's new project key, nothing else: an empty keyring, and the signature checked by hand
    against the .pub file (no private key anywhere in CI)."""
    monkeypatch.setenv("EDGEKIT_KEYRING", str(tmp_path / "empty"))
    bundle = default_bundle_dir()
    data = read_manifest_data(bundle)
    sig = json.loads((bundle / SIGNATURE_NAME).read_text())
    pub = load_public_key(PROJECT_PUB)
    assert sig["key_id"] == key_id(pub) == "7c92f75731eb0730"
    pub.verify(base64.b64decode(sig["signature"]), _DOMAIN + canonical_manifest(data))  # raises if not
    trust = check_bundle(bundle, data)
    assert trust.trusted and trust.key_id == key_id(pub), trust.reason
    floor = trust_policy().min_release[key_id(pub)]
    assert data["release"] >= floor  # the shipped default is not older than what the package accepts
    assert load_classifier().manifest.labels


def _retired_default(tmp_path):
    """The default the lost key signed (fast16-mod, before the rotation; no release version), as it
    was shipped: manifest, signature and model files."""
    bundle = tmp_path / "old_default"
    shutil.copytree(FIXTURES / "retired_default", bundle)
    return bundle


def test_bundles_signed_by_the_retired_key_are_refused_even_with_allow_unsigned(strict, tmp_path):
    bundle = _retired_default(tmp_path)
    trust = check_bundle(bundle, read_manifest_data(bundle))
    assert not trust.trusted and trust.refused and "retired key" in trust.reason
    with pytest.raises(SignatureError, match="retired key"):
        load_classifier(bundle, allow_unsigned=True)
    _one_line_refusal(_classify(bundle, "--allow-unsigned"), "retired key", RETIRED)
    res = CliRunner().invoke(main, ["verify", str(bundle)])
    assert res.exit_code == 1 and "NOT trusted" in res.stdout and "retired" in res.stdout


def test_a_retired_signature_that_still_matches_can_be_re_signed(tmp_path, ring):
    """The rotation itself: the lost key's signature proves the bundle intact, a new key signs it."""
    key, pub = generate_keypair(tmp_path / "new")
    shutil.copy(pub, ring)
    bundle = _retired_default(tmp_path)
    res = CliRunner().invoke(main, ["sign", str(bundle), "--key", str(key)])
    assert res.exit_code == 0, res.output
    assert "retired key; its signature still matches" in res.stdout and "release stamped" in res.stdout
    assert check_bundle(bundle, read_manifest_data(bundle)).trusted


def test_show_keys_lists_the_project_key_the_retired_key_and_revocations():
    res = CliRunner().invoke(main, ["verify", "--show-keys"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert any(ln.startswith("7c92f75731eb0730  edgekit-project-2026-12  [package]  trusted from release")
               for ln in lines), res.stdout
    assert any(ln.startswith(RETIRED) and "RETIRED" in ln for ln in lines)
    assert sum(ln.startswith("revoked bundle ") for ln in lines) == 2
    assert CliRunner().invoke(main, ["verify"]).exit_code == 2  # neither a bundle nor --show-keys


# ------------------------------------------------------------------------- versioned trust, revocation


def _site_signed(tmp_path, ring, release):
    key, pub = generate_keypair(tmp_path / "site")
    shutil.copy(pub, ring)
    bundle = golden_copy(tmp_path / "b")
    (bundle / SIGNATURE_NAME).unlink()
    sign_bundle(bundle, key, release=release)
    return bundle, key_id(load_public_key(pub)), key


def test_a_rolled_back_release_is_refused_in_one_line(strict, tmp_path, ring):
    bundle, kid, _ = _site_signed(tmp_path, ring, "2026.03.01")
    assert load_classifier(bundle).manifest.release == "2026.03.01"
    _site_policy(ring, keys={kid: {"min_release": "2026.6"}})
    _one_line_refusal(_classify(bundle, "--allow-unsigned"), "rollback", "2026.03.01", "2026.6")
    _site_policy(ring, keys={kid: {"min_release": "2026.3.1"}})  # equal: accepted
    assert check_bundle(bundle, read_manifest_data(bundle)).trusted


def test_a_pinned_key_refuses_a_bundle_without_a_release(strict, tmp_path, ring):
    bundle, kid, key = _site_signed(tmp_path, ring, "2026.03.01")
    _edit(bundle, lambda d: d.pop("release"))
    from edgekit.signing import sign_manifest_data

    sign_manifest_data(bundle, read_manifest_data(bundle), key)  # signed, the old way: no release
    assert check_bundle(bundle, read_manifest_data(bundle)).trusted  # no pin for this key yet
    _site_policy(ring, keys={kid: {"min_release": "1"}})
    trust = check_bundle(bundle, read_manifest_data(bundle))
    assert trust.refused and "release (none)" in trust.reason


def test_sign_refuses_a_release_below_the_pinned_minimum(tmp_path, ring):
    bundle, kid, key = _site_signed(tmp_path, ring, "2026.12.01")
    _site_policy(ring, keys={kid: {"min_release": "2026.12.01"}})
    res = CliRunner().invoke(main, ["sign", str(bundle), "--key", str(key), "--release", "2026.1.1"])
    _one_line_refusal(res, "rollback")
    res = CliRunner().invoke(main, ["sign", str(bundle), "--key", str(key), "--release", "v2"])
    _one_line_refusal(res, "dotted integers")


@pytest.mark.parametrize("what", ["manifest", "model", "key"])
def test_a_site_revocation_is_refused_everywhere(strict, tmp_path, ring, what):
    bundle = golden_copy(tmp_path / "b")
    data = read_manifest_data(bundle)
    assert check_bundle(bundle, data).trusted
    if what == "manifest":
        _site_policy(ring, revoked_bundles={manifest_sha256(data): "recalled 2026-12"})
    elif what == "model":
        _site_policy(ring, revoked_bundles={data["artifacts"]["tflite_int8"]["sha256"]: "recalled 2026-12"})
    else:
        kid = json.loads((bundle / SIGNATURE_NAME).read_text())["key_id"]
        _site_policy(ring, revoked_keys={kid: "leaked 2026-12"})
    _one_line_refusal(_classify(bundle, "--allow-unsigned"), "revoked")
    if what != "key":  # the signature stripped: an unsigned copy of a revoked bundle is refused too
        (bundle / SIGNATURE_NAME).unlink()
        _one_line_refusal(_classify(bundle, "--allow-unsigned"), "revoked")


def test_the_package_revokes_the_two_earlier_defaults():
    revoked = trust_policy().revoked_bundles
    assert {"177adab95c330adc35be2aabd0df0c1c65300326fe7db8d10abdb6fd9e7d3ac8",
            "50cd0efaa68c9f048b63ea59dd3ccf05d1f35a55f8a369372d5ced9b9ff796ba"} <= set(revoked)


def test_a_site_policy_only_adds_to_the_package(ring):
    kid = key_id(load_public_key(PROJECT_PUB))
    package_floor = trust_policy().min_release[kid]
    _site_policy(ring, keys={kid: {"min_release": "1"}}, revoked_keys={}, retired_keys={})
    policy = trust_policy()
    assert policy.min_release[kid] == package_floor and RETIRED in policy.retired_keys


@pytest.mark.parametrize("text", ["{", "[]", '{"schema": "edgekit.trust/1", "revoked_bundles": [1]}',
                                  '{"schema": "edgekit.trust/1", "keys": {"zz": {}}}',
                                  '{"schema": "edgekit.trust/1", "keys": {"0123456789abcdef": '
                                  '{"min_release": "1e9"}}}'])
def test_a_malformed_site_policy_fails_closed_with_one_line(strict, ring, text):
    (ring / "trust.json").write_text(text)
    _one_line_refusal(_classify(GOLDEN), "trust policy", "malformed")


# --------------------------------------------------------------------------- sign only what verifies


def _tampered(tmp_path):
    bundle = golden_copy(tmp_path / "b")
    _edit(bundle, lambda d: d["thresholds"].update(positive=0.5, cutoff=0.5, negative=0.5))
    return bundle


def test_sign_refuses_a_tampered_bundle_and_says_what_changed(tmp_path, ring):
    key, pub = generate_keypair(tmp_path / "k")
    shutil.copy(pub, ring)
    bundle = _tampered(tmp_path)
    res = CliRunner().invoke(main, ["sign", str(bundle), "--key", str(key)])
    _one_line_refusal(res, "does not match", "changed since signing: thresholds", "--resign-unverified")
    assert "ed25519" in (bundle / SIGNATURE_NAME).read_text()  # the old signature stays
    res = CliRunner().invoke(main, ["sign", str(bundle), "--key", str(key),
                                    "--resign-unverified", "threshold moved on purpose, ticket 41"])
    assert res.exit_code == 0, res.output
    assert "UNVERIFIED (threshold moved on purpose, ticket 41)" in res.stdout
    sig = json.loads((bundle / SIGNATURE_NAME).read_text())
    assert sig["resigned_unverified"]["reason"] == "threshold moved on purpose, ticket 41"
    assert check_bundle(bundle, read_manifest_data(bundle)).trusted


def test_sign_refuses_a_signature_it_cannot_check(tmp_path, ring):
    key, _ = generate_keypair(tmp_path / "k")
    (ring / "test_signing.pub").unlink()
    res = CliRunner().invoke(main, ["sign", str(golden_copy(tmp_path / "b")), "--key", str(key)])
    _one_line_refusal(res, "cannot be checked")


def test_pack_with_a_signing_key_refuses_a_tampered_bundle(tmp_path, ring, monkeypatch):
    key, _ = generate_keypair(tmp_path / "k")
    monkeypatch.setenv("EDGEKIT_SIGNING_KEY", str(key))
    out = tmp_path / "device"
    res = CliRunner().invoke(main, ["pack", str(_tampered(tmp_path)), "-o", str(out),
                                    "--formats", "tflite_int8"])
    _one_line_refusal(res, "changed since signing: thresholds")
    assert not out.exists()
    res = CliRunner().invoke(main, ["pack", str(GOLDEN), "-o", str(out), "--formats", "tflite_int8"])
    assert res.exit_code == 0 and "source signed by test_signing" in res.stdout, res.output


def test_export_with_a_signing_key_refuses_a_tampered_source_before_any_work(tmp_path, ring):
    key, _ = generate_keypair(tmp_path / "k")
    res = CliRunner().invoke(main, ["export", str(_tampered(tmp_path)), "-o", str(tmp_path / "out"),
                                    "--sign-key", str(key)])
    _one_line_refusal(res, "refusing to sign", "thresholds")
    assert not (tmp_path / "out").exists()
