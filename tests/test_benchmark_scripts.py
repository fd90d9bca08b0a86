"""Every benchmark script answers ``--help``; the cheap ones run their smallest case (issue 27.4):
`edgekit bench` works from a device install without matplotlib, `benchmarks/speed.py` exports its
seed model with the format table, the patient-rule benchmark reports and writes its rule."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from device_helpers import GOLDEN

from edgekit.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py")
                 if 'if __name__ == "__main__":' in p.read_text())


def test_the_scripts_are_found():
    assert {"speed", "int8_band", "patient_rule", "worker", "domain_guard"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    res = subprocess.run([sys.executable, "-m", f"edgekit.benchmarks.{script}", "--help"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.lower().startswith("usage:") and "Traceback" not in res.stderr


def test_bench_without_matplotlib_writes_its_results_and_says_so_once(cell_folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what a device install has: no matplotlib
    out = tmp_path / "bench"
    res = CliRunner().invoke(main, ["bench", str(GOLDEN), "--data", str(cell_folder), "--threads", "1",
                                    "--formats", "tflite_fp32", "--runs", "2", "--warmup", "0",
                                    "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and res.stderr.count("plots skipped") == 1
    assert {p.name for p in out.iterdir()} == {"bench.json", "bench.csv", "bench.md"}
    assert json.loads((out / "bench.json").read_text())["rows"]


def _split(cell_folder: Path, path: Path) -> Path:
    from edgekit.data import scan_dataset
    from edgekit.splits import make_split, save_split

    save_split(make_split(scan_dataset(cell_folder), test_fraction=0.3, val_fraction=0.3, seed=1), path)
    return path


def test_patient_rule_smallest_case_reports_and_writes_the_rule(tmp_path, capsys):
    """On the 12 NIH sample crops (real cells: they pass the quality gates) split by patient."""
    from edgekit.benchmarks.patient_rule import main as bench_main
    from edgekit.manifest import load_manifest

    split = _split(ROOT / "examples" / "cells", tmp_path / "split.json")
    bundle = tmp_path / "bundle"
    shutil.copytree(GOLDEN, bundle)
    out = tmp_path / "rule.json"
    assert bench_main(["--split", str(split), "--bundle", str(bundle), "-o", str(out), "--write-rule"]) == 0
    res = json.loads(out.read_text())
    assert set(res["parts"]) == {"val", "test"}
    for part in res["parts"].values():
        for rule in ("manifest", "evidence"):
            t = part["rules"][rule]
            assert {"infected_positive", "controls_positive", "referred"} <= set(t)
            assert t["referred"]["n"] == part["patients"] and len(t["referred"]["ci95"]) == 2
        assert part["classified"] > 0 and 0 <= part["uncertain_band"]["value"] <= 1
    assert "controls positive" in capsys.readouterr().out
    rule = load_manifest(bundle).patient_rule
    assert (rule.positive_evidence, rule.refused_crops) == ("wilson_lower", "unknown")
    assert not (bundle / "signature.json").exists()  # the manifest changed: sign it again


def test_int8_band_smallest_case(cell_folder, tmp_path):
    from edgekit.benchmarks.int8_band import main as band_main

    split = _split(cell_folder, tmp_path / "split.json")
    out = tmp_path / "band.json"
    assert band_main([f"g={GOLDEN}", "--split", str(split), "--formats", "tflite_fp32", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["results"]["g/tflite_fp32"]["band"]["uncertain"] >= 0


def test_speed_runs_and_reports_only_the_rows_asked_for(tmp_path, monkeypatch, capsys):
    """`speed --skip latency,screen,cold` runs only `screen --fields` (e.g. many rounds of the field
    path alone), and its report shows "-" for the rows it did not run."""
    from edgekit.benchmarks import speed

    ran = []

    def fake_run(cmd, src, first_line=False):
        ran.append(cmd[0] + (" --fields" if "--fields" in cmd else ""))
        return {"wall_s": 1.0, "cpu_s": 1.5, "peak_rss_mb": 99.0, "stdout": '{"crops": 12}\n', "stderr": ""}

    monkeypatch.setattr(speed, "_run", fake_run)
    monkeypatch.setattr(speed, "byte_compile", lambda src: None)
    monkeypatch.setattr(speed, "patient_crops", lambda cache: tmp_path)
    monkeypatch.setattr(speed, "iml_fields", lambda: [tmp_path / "f.jpg"])
    (tmp_path / "c.png").write_bytes(b"")
    out = tmp_path / "r.json"
    result = speed.main(["--skip", "latency,screen,cold", "--rounds", "2", "--src", f"a={tmp_path}",
                         "--src", f"b={tmp_path}", "--out", str(out)])
    assert ran == ["screen --fields"] * 4
    a = result["end_to_end"]["a"]
    assert a["fields_cpu_s"] == 1.5 and a["cold_cpu_s"] is None and a["screen_rss_mb"] is None
    table = capsys.readouterr().out
    assert "| screen 1,000 NIH crops | - | - |" in table and "1.00 s wall, 1.50 s CPU, 99 MB" in table
    assert speed.main(["--report", str(out)])["end_to_end"]["b"]["fields_cells"] == 12


def test_speed_report_and_seed_model_export(cell_folder, tmp_path, monkeypatch):
    """speed.py's report from a results file, and its seed model export (the part that needs
    TensorFlow, with a tiny model standing in for the seed-sized ResNet)."""
    from edgekit.benchmarks import speed

    results = tmp_path / "speed.json"
    results.write_text(json.dumps({"latency": [{"model": "default", "threads": 1, "batch": 1,
                                                "ms_per_crop": 0.2}]}))
    assert speed.main(["--report", str(results)])["latency"][0]["model"] == "default"
    pytest.importorskip("tensorflow")
    from bundle_factory import tiny_model

    import edgekit.model

    model = tiny_model((64, 64))
    monkeypatch.setattr(edgekit.model, "build_resnet", lambda: model)
    monkeypatch.setattr(speed, "patient_crops", lambda cache: cell_folder / "Uninfected")
    path = tmp_path / "seed.tflite"
    speed.make_seed_model(path)
    assert path.stat().st_size > 1000


def test_site_error_sources_views_are_the_eight_orientations_and_their_means_are_turn_invariant():
    import numpy as np

    from edgekit.benchmarks.site_error_sources import ORIENTATIONS, dihedral_views

    x = np.arange(2 * 3 * 3 * 1, dtype=np.float32).reshape(2, 3, 3, 1)
    views = dihedral_views(x)
    assert np.array_equal(views[0], x)
    assert len({v.tobytes() for v in views}) == 8  # an asymmetric crop gives eight different views
    # the mean over all eight is the same whichever way the crop came in
    turned = np.rot90(x, 1, axes=(1, 2))
    mean = lambda batch: np.mean([dihedral_views(batch)[i] for i in ORIENTATIONS["all8"]], axis=0)  # noqa: E731
    assert np.allclose(mean(x), mean(turned))
