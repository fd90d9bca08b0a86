"""Signed bundles (issue 13.1): keygen, sign, verify on load; every tampering the issue lists is refused
unless running unsigned bundles is explicitly allowed."""

from __future__ import annotations

import json
import shutil

import pytest
from bundle_factory import TEST_KEY
from click.testing import CliRunner
from device_helpers import CELLS, GOLDEN, golden_copy

from edgekit.cli import main
from edgekit.device.runtime import default_bundle_dir, load_classifier
from edgekit.errors import SignatureError
from edgekit.manifest import read_manifest_data, sha256_file
from edgekit.signing import SIGNATURE_NAME, canonical_manifest, check_bundle, generate_keypair, sign_bundle

CROP = sorted(CELLS.iterdir())[0]


@pytest.fixture
def strict(monkeypatch):
    """Signatures enforced, as on a clinic's device (the test run allows unsigned bundles otherwise)."""
    monkeypatch.delenv("EDGEKIT_ALLOW_UNSIGNED", raising=False)


def _edit(bundle, change) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def _classify(bundle, *extra):
    return CliRunner().invoke(main, ["classify", str(CROP), "-m", str(bundle), "--format", "jsonl", *extra])


def test_golden_bundle_is_trusted_and_loads(strict):
    assert check_bundle(GOLDEN, read_manifest_data(GOLDEN)).trusted
    res = _classify(GOLDEN)
    assert res.exit_code == 0, res.output
    assert "warning" not in res.stderr


def test_shipped_default_model_is_signed_by_the_project_key(strict):
    """If this fails after the default model changed, re-sign it (docs/trust.md, "Maintainers")."""
    bundle = default_bundle_dir()
    trust = check_bundle(bundle, read_manifest_data(bundle))
    assert trust.trusted, trust.reason
    assert "edgekit-project" in trust.reason


def test_unsigned_bundle_is_refused_with_one_line(strict, tmp_path):
    bundle = golden_copy(tmp_path / "b")
    (bundle / SIGNATURE_NAME).unlink()
    with pytest.raises(SignatureError, match="not signed"):
        load_classifier(bundle)
    res = _classify(bundle)
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: refusing bundle")
    assert "--allow-unsigned" in res.stderr


@pytest.mark.parametrize("tamper", ["swap_labels", "threshold", "weight_byte_with_new_sha"])
def test_tampered_signed_bundle_is_refused(strict, tmp_path, tamper):
    bundle = golden_copy(tmp_path / "b")
    if tamper == "swap_labels":  # issue 13, case 1: turns a positive into "Uninfected 0.004"
        _edit(bundle, lambda d: d.update(labels=d["labels"][::-1]))
    elif tamper == "threshold":
        _edit(bundle, lambda d: d["thresholds"].update(positive=0.99))
    else:  # a weight byte changed and its new sha256 written into the manifest
        model = bundle / "model_int8.tflite"
        data = bytearray(model.read_bytes())
        data[len(data) - 100] ^= 0x01
        model.write_bytes(bytes(data))
        _edit(bundle, lambda d: d["artifacts"]["tflite_int8"].update(sha256=sha256_file(model)))
    res = _classify(bundle)
    assert res.exit_code == 2 and res.stdout == ""
    assert "signature does not match the manifest" in res.stderr and "Traceback" not in res.output


def test_a_signature_file_with_a_5000_digit_number_is_one_line(strict, tmp_path):
    bundle = golden_copy(tmp_path / "b")
    (bundle / SIGNATURE_NAME).write_text('{"n": ' + "9" * 5000 + "}")
    res = _classify(bundle)
    assert res.exit_code == 2 and "signature.json is malformed" in res.stderr, res.output


def test_untrusted_key_is_refused_and_trusting_it_works(strict, tmp_path, monkeypatch):
    key, pub = generate_keypair(tmp_path / "keys" / "site")
    bundle = golden_copy(tmp_path / "b")
    sign_bundle(bundle, key)
    with pytest.raises(SignatureError, match="not in the keyring"):
        load_classifier(bundle)
    ring = tmp_path / "ring"
    ring.mkdir()
    shutil.copy(pub, ring)
    monkeypatch.setenv("EDGEKIT_KEYRING", str(ring))
    assert load_classifier(bundle).manifest.labels


def test_allow_unsigned_loads_with_a_warning(strict, tmp_path):
    bundle = golden_copy(tmp_path / "b")
    _edit(bundle, lambda d: d.update(labels=d["labels"][::-1]))
    res = _classify(bundle, "--allow-unsigned")
    assert res.exit_code == 0
    assert res.stderr.startswith("warning: running an untrusted bundle")


def test_keygen_sign_verify_cli(strict, tmp_path, monkeypatch):
    ring = tmp_path / "ring"
    monkeypatch.setenv("EDGEKIT_KEYRING", str(ring))
    runner = CliRunner()
    res = runner.invoke(main, ["keygen", str(tmp_path / "site"), "--trust"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "site.key").stat().st_mode & 0o077 == 0  # private key readable by its owner only
    assert (ring / "site.pub").is_file()
    assert runner.invoke(main, ["keygen", str(tmp_path / "site")]).exit_code == 2  # never overwritten
    # the same name elsewhere, to be trusted here too: refused before a key pair is written, so no
    # new key is left behind that this machine does not trust
    (tmp_path / "other").mkdir()
    res = runner.invoke(main, ["keygen", str(tmp_path / "other" / "site"), "--trust"])
    assert res.exit_code == 2 and "already trusts a key named site.pub" in res.output
    assert list((tmp_path / "other").iterdir()) == []
    bundle = golden_copy(tmp_path / "b")
    (bundle / SIGNATURE_NAME).unlink()  # signed by the test key, which this keyring cannot check
    res = runner.invoke(main, ["sign", str(bundle), "--key", str(tmp_path / "site.key")])
    assert res.exit_code == 0, res.output
    assert "was unsigned" in res.stdout
    res = runner.invoke(main, ["verify", str(bundle)])
    assert res.exit_code == 0 and "trusted: signed by site" in res.stdout
    _edit(bundle, lambda d: d.update(name="other"))
    res = runner.invoke(main, ["verify", str(bundle)])
    assert res.exit_code == 1 and "NOT trusted" in res.stdout


def test_sign_refuses_a_bundle_whose_model_does_not_match(tmp_path):
    key, _ = generate_keypair(tmp_path / "k")
    bundle = golden_copy(tmp_path / "b")
    (bundle / "model_int8.tflite").write_bytes(b"x" * 10)
    res = CliRunner().invoke(main, ["sign", str(bundle), "--key", str(key)])
    assert res.exit_code == 2 and "sha256" in res.stderr


def test_pack_signs_when_a_key_is_configured(strict, tmp_path, monkeypatch):
    key, pub = generate_keypair(tmp_path / "k")
    ring = tmp_path / "ring"
    ring.mkdir()
    shutil.copy(pub, ring)
    shutil.copy(TEST_KEY.with_suffix(".pub"), ring)  # the golden bundle's signer: pack checks it first
    monkeypatch.setenv("EDGEKIT_KEYRING", str(ring))
    monkeypatch.setenv("EDGEKIT_SIGNING_KEY", str(key))
    out = tmp_path / "device"
    res = CliRunner().invoke(main, ["pack", str(GOLDEN), "-o", str(out), "--formats", "tflite_int8"])
    assert res.exit_code == 0 and "signed with key" in res.stdout, res.output
    assert load_classifier(out).fmt == "tflite_int8"


def test_canonical_form_ignores_layout_but_not_content():
    a = {"labels": ["a", "b"], "thresholds": {"positive": 0.5}}
    b = json.loads(json.dumps(a, indent=4))
    assert canonical_manifest(a) == canonical_manifest(b)
    assert canonical_manifest(a) != canonical_manifest({**a, "labels": ["b", "a"]})
    assert b"NaN" in canonical_manifest({**a, "evaluation": {"auc": float("nan")}})  # training records


def test_public_keys_read_without_the_serialization_module_equal_cryptographys(tmp_path):
    """The short PEM path for Ed25519 keys gives cryptography's key; other keys still go through
    cryptography's loader (an RSA key is refused, a malformed file is one clear error)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from edgekit.signing import PACKAGE_KEYS, load_public_key

    _, pub = generate_keypair(tmp_path / "k")
    for path in [pub, *PACKAGE_KEYS.glob("*.pub")]:
        ref = serialization.load_pem_public_key(path.read_bytes())
        assert load_public_key(path).public_bytes_raw() == ref.public_bytes_raw()
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    (tmp_path / "rsa.pub").write_bytes(other.public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(SignatureError, match="not an Ed25519 public key"):
        load_public_key(tmp_path / "rsa.pub")
    text = pub.read_text().replace("A", "!", 1)
    (tmp_path / "bad.pub").write_text(text)
    with pytest.raises(SignatureError, match="not a PEM public key"):
        load_public_key(tmp_path / "bad.pub")


def test_verification_cache_never_lets_a_tampered_bundle_pass(strict, tmp_path, monkeypatch):
    """A signature that verified is remembered (a device start then skips cryptography), but only for
    that exact key, signature and manifest: a changed model byte or an edited manifest is refused with
    the cache warm, as with it cold."""
    from edgekit.errors import IntegrityError

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    bundle = golden_copy(tmp_path / "b")
    assert load_classifier(bundle).trust.trusted
    assert len(list((tmp_path / "cache" / "verified").iterdir())) == 1
    assert load_classifier(bundle).trust.trusted  # from the cache

    model = bundle / "model_int8.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) - 100] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):  # the artifact is hashed on every load, cache or not
        load_classifier(bundle)
    _edit(bundle, lambda d: d["artifacts"]["tflite_int8"].update(sha256=sha256_file(model)))
    with pytest.raises(SignatureError, match="signature does not match the manifest"):
        load_classifier(bundle)
    res = _classify(bundle)
    assert res.exit_code == 2 and "signature does not match the manifest" in res.stderr
    assert len(list((tmp_path / "cache" / "verified").iterdir())) == 1  # nothing cached for it


def test_verification_cache_is_not_used_for_a_keyring_this_user_cannot_write(strict, tmp_path, monkeypatch):
    """A marker planted in the cache for a forged signature would pass a key whose folder the user may
    write anyway (they could add a key there); for a read-only keyring (a site's protected one, a
    system-wide install) the cache is not consulted, so the forgery is refused."""
    import base64

    import edgekit.signing as signing

    ring = tmp_path / "ring"
    ring.mkdir()
    shutil.copy(TEST_KEY.with_suffix(".pub"), ring)
    monkeypatch.setenv("EDGEKIT_KEYRING", str(ring))
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    bundle = golden_copy(tmp_path / "b")
    _edit(bundle, lambda d: d.update(name="forged"))  # the signature no longer matches
    data = read_manifest_data(bundle)
    sig = json.loads((bundle / SIGNATURE_NAME).read_text())
    key = next(k for k in signing.trusted_keys().values() if k.source.parent == ring)
    marker = signing._verified_marker(key.raw, base64.b64decode(sig["signature"]),
                                      signing._signed_bytes(data))
    marker.parent.mkdir(parents=True)
    marker.touch()  # planted by whoever can write the cache

    real_access = signing.os.access
    monkeypatch.setattr(signing.os, "access",
                        lambda p, mode: False if str(p) == str(ring) and mode == signing.os.W_OK
                        else real_access(p, mode))
    with pytest.raises(SignatureError, match="signature does not match the manifest"):
        load_classifier(bundle)
