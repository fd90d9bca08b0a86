"""benchmarks/speed.py: ratios and medians in its report (the measurements themselves need the
shared data and are run by hand, see benchmarks/RESULTS.md)."""

from __future__ import annotations

from pathlib import Path

from edgekit.benchmarks.speed import _src, report, summarize_e2e


def _runs(wall: float, cpu: float, rss: float) -> list[dict]:
    return [{"wall_s": wall * k, "cpu_s": cpu * k, "peak_rss_mb": rss * k, "cells": 100} for k in (1, 2, 3)]


def test_report_ratios_and_medians():
    e2e = summarize_e2e({
        "before": {"screen": _runs(6, 3, 90), "fields": _runs(8, 4, 150), "cold": _runs(0.3, 0.3, 70)},
        "after": {"screen": _runs(2, 1, 80), "fields": _runs(2, 2, 120), "cold": _runs(0.15, 0.2, 60)},
    })
    assert e2e["after"]["screen_wall_s"] == 4 and e2e["after"]["fields_rss_mb"] == 360
    assert "| 0.40 (1.5x) | 240 / 360 / 180 |" in report({"end_to_end": e2e})
    lat = [{"model": m, "threads": 1, "batch": 1, "ms_per_crop": ms}
           for m, ms in (("default", 0.2), ("old default", 0.5), ("MalariaScreener", 1.0))]
    text = report({"latency": lat, "end_to_end": e2e})
    assert "| default | 1 | 1 | 0.200 | 5.00x | 2.50x |" in text
    assert "| after | 4.00 (3.0x) | 2.00 (3.0x) | 4.00 (4.0x) |" in text


def test_src_spec(tmp_path):
    name, (src, bundle) = _src(f"old={tmp_path}@{tmp_path / 'b'}", Path("/x"))
    assert (name, src, bundle) == ("old", tmp_path.resolve(), (tmp_path / "b").resolve())
    assert _src(f"new={tmp_path}", Path("/x"))[1][1] == Path("/x")


def test_issue_rows_show_each_source_against_the_targets():
    e2e = summarize_e2e({
        "before": {"screen": _runs(1.9, 2.5, 98), "fields": _runs(1.9, 2.9, 153),
                   "cold": _runs(0.245, 0.2, 85)},
        "after": {"screen": _runs(0.5, 0.6, 70), "fields": _runs(1.0, 1.5, 90),
                  "cold": _runs(0.14, 0.1, 60)},
    })
    for d in e2e.values():  # one run each, so the medians are the values above
        for key in ("screen", "fields", "cold"):
            for k in ("wall_s", "cpu_s"):
                d[f"{key}_{k}"] = d[key][0][k]
            d[f"{key}_rss_mb"] = d[key][0]["peak_rss_mb"]
    lat = [{"model": "default", "threads": 1, "batch": 1, "ms_per_crop": 0.19},
           {"model": "MalariaScreener", "threads": 1, "batch": 1, "ms_per_crop": 0.88}]
    text = report({"latency": lat, "end_to_end": e2e, "machine": {"cpu": {"model": "X", "flags": ["avx2"]}}})
    assert "Issue 26 (CPU: X; flags: avx2)" in text
    assert "| per crop, int8, batch 1, 1 thread, vs MalariaScreener | 0.190 ms vs 0.880 ms: 4.6x ✗ |" in text
    assert "1.90 s wall, 2.50 s CPU, 98 MB: 10.0x the model's time ✗ | 0.50 s wall, 0.60 s CPU, 70 MB:" \
           " 2.6x the model's time ✓ |" in text
    assert ("| 1.90 s wall, 2.90 s CPU, 153 MB ✗ | 1.00 s wall, 1.50 s CPU, 90 MB ✓"
            " | <= 1.2 s, <= 100 MB |") in text
    assert "| 0.245 s, 85 MB ✗ | 0.140 s, 60 MB ✓ | <= 0.15 s |" in text


def test_results_name_trees_and_bundles_without_machine_paths(tmp_path):
    from pathlib import Path

    from edgekit.benchmarks.speed import PEER, bundle_ref, portable, source_ref
    from edgekit.paths import default_bundle_dir

    ref = bundle_ref(default_bundle_dir())
    # the per-crop models too (they were recorded as machine paths)
    assert portable(default_bundle_dir() / "model_int8.tflite") == "edgekit/models/default/model_int8.tflite"
    assert portable(PEER) == PEER.name  # outside the checkout and the data root: its name only
    assert ref is not None and ref["path"] == "edgekit/models/default" and len(ref["manifest_sha256"]) == 64
    assert not source_ref(Path(__file__).resolve().parents[1]).startswith("/")  # a commit, not a path
    assert source_ref(tmp_path) == tmp_path.name  # no git: the folder's name only
    # a tree unpacked inside a checkout (git archive) is not that checkout's commit: its name only
    import subprocess

    checkout, unpacked = tmp_path / "checkout", tmp_path / "checkout" / "49f3102"
    unpacked.mkdir(parents=True)
    git = ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "c"], check=True)
    assert source_ref(checkout) != checkout.name and source_ref(unpacked) == "49f3102"
    assert bundle_ref(None) is None
