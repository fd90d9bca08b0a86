"""`bench` and `info` say when a bundle is untrusted (issue 30.7); bench refuses a revoked one."""

from __future__ import annotations

import json

from click.testing import CliRunner
from device_helpers import GOLDEN, golden_copy

from edgekit.cli import main
from edgekit.manifest import read_manifest_data
from edgekit.signing import manifest_sha256

ROOT = GOLDEN.parents[2]


def _tamper(bundle) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    data["thresholds"]["positive"] = 0.99
    path.write_text(json.dumps(data, indent=2))


def _bench(bundle, tmp_path):
    return CliRunner().invoke(main, ["bench", str(bundle), "--data", str(ROOT / "examples" / "cells"),
                                     "--threads", "1", "--runs", "2", "--warmup", "1", "--batch-size", "4",
                                     "--no-plots", "--profile", "host", "--formats", "tflite_int8",
                                     "-o", str(tmp_path / "out")])


def test_info_says_trusted_or_not(tmp_path):
    res = CliRunner().invoke(main, ["info", str(GOLDEN)])
    assert res.exit_code == 0 and res.stdout.startswith("trust:         trusted: signed by test_signing")
    bundle = golden_copy(tmp_path / "b")
    _tamper(bundle)
    res = CliRunner().invoke(main, ["info", str(bundle)])
    assert res.exit_code == 0 and res.stdout.startswith("trust:         NOT TRUSTED: its signature does not")
    res = CliRunner().invoke(main, ["info", str(bundle), "--json"])
    assert json.loads(res.stdout)["trust"]["trusted"] is False


def test_bench_says_a_tampered_bundle_is_untrusted(tmp_path):
    bundle = golden_copy(tmp_path / "b")
    _tamper(bundle)
    res = _bench(bundle, tmp_path)
    assert res.exit_code == 0, res.output
    assert "trust: UNTRUSTED bundle (measured anyway): its signature does not match" in res.stderr
    res = _bench(GOLDEN, tmp_path)
    assert res.exit_code == 0 and "trust: signed by test_signing" in res.stderr, res.output


def test_bench_refuses_a_revoked_bundle_in_one_line(tmp_path, monkeypatch):
    ring = tmp_path / "ring"
    ring.mkdir()
    (ring / "trust.json").write_text(json.dumps({"schema": "edgekit.trust/1", "revoked_bundles": {
        manifest_sha256(read_manifest_data(GOLDEN)): "recalled"}}))
    monkeypatch.setenv("EDGEKIT_KEYRING", str(ring))
    res = _bench(GOLDEN, tmp_path)
    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1 and "revoked: recalled" in res.stderr
