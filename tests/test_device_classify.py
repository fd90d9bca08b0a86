"""`edgekit classify` end to end on the golden bundle: formats, inputs, bad files, bad bundles."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
from click.testing import CliRunner
from device_helpers import CELLS, GOLDEN, awkward_inputs, golden_copy

from edgekit.cli import main

EXPECTED = json.loads((GOLDEN / "expected.json").read_text())


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def _jsonl(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_jsonl_rows_carry_the_contract_fields():
    res = run("classify", str(CELLS), "--model", str(GOLDEN), "--format", "jsonl")
    assert res.exit_code == 0, res.output
    rows = _jsonl(res.stdout)
    assert [r["path"].split("/")[-1] for r in rows] == EXPECTED["crops"]
    sha = json.loads((GOLDEN / "manifest.json").read_text())["artifacts"]["tflite_int8"]["sha256"]
    for row, probs in zip(rows, EXPECTED["probabilities"]["tflite_int8"], strict=True):
        assert row["status"] == "classified" and row["model_sha256"] == sha
        assert row["p_parasitized"] == pytest.approx(probs[0], abs=1 / 256 + 1e-6)
        assert row["probability"] == pytest.approx(max(probs), abs=1 / 256 + 1e-6)
        assert row["label"] == EXPECTED["labels"][probs.index(max(probs))]
        p = row["p_parasitized"]
        assert row["decision"] == ("positive" if p >= 0.7 else "negative" if p < 0.3 else "uncertain")
    assert "classified 4, rejected 0, failed 0" in res.stderr


def test_table_and_csv():
    res = run("classify", str(CELLS / "*.webp"), "-m", str(GOLDEN), "--model-format", "onnx_fp32")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split()[:4] == ["path", "label", "prob", "p_parasitized"]
    assert len(lines) == 5
    assert all(ln.split()[-1] in ("negative", "positive", "microscopy") for ln in lines[1:])
    res = run("classify", str(CELLS), "-m", str(GOLDEN), "--format", "csv", "--model-format", "tflite_fp32")
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 4
    p0 = EXPECTED["probabilities"]["tflite_fp32"][0][0]
    assert float(rows[0]["p_parasitized"]) == pytest.approx(p0, abs=1e-5)
    assert rows[0]["model_format"] == "tflite_fp32"


def test_folders_are_recursive_and_bad_files_do_not_stop_the_batch(tmp_path):
    expected = awkward_inputs(tmp_path / "in" / "nested")
    shutil.copy(CELLS / "parasitized_a.webp", tmp_path / "in" / "good.webp")
    res = run("classify", str(tmp_path / "in"), str(tmp_path / "does-not-exist.png"), "-m", str(GOLDEN),
              "--format", "jsonl")
    assert res.exit_code == 1  # some inputs failed; the rest were classified
    rows = {r["path"].split("/")[-1]: r for r in _jsonl(res.stdout)}
    assert "notes.txt" not in rows  # folders only yield image files
    assert rows["good.webp"]["status"] == "classified"
    missing = rows["does-not-exist.png"]
    assert (missing["status"], missing["reason"]) == ("failed", "file not found")
    for name, status in expected.items():
        assert rows[name]["status"] == status, (name, rows[name])
        if status == "failed":
            assert rows[name]["reason"] and "\n" not in rows[name]["reason"]
    assert "too large" in rows["huge.png"]["reason"]
    assert "empty" in rows["zero.png"]["reason"]


def test_quality_rejections_are_reported(tmp_path):
    import numpy as np
    from device_helpers import write_image

    write_image(tmp_path / "blank.png", np.zeros((64, 64, 3), np.uint8))
    res = run("classify", str(tmp_path / "blank.png"), "-m", str(GOLDEN), "--format", "jsonl")
    assert res.exit_code == 0
    (row,) = _jsonl(res.stdout)
    assert row["status"] == "rejected" and row["reason"].startswith("blank")
    res = run("classify", str(tmp_path / "blank.png"), "-m", str(GOLDEN), "--format", "jsonl", "--no-quality")
    assert _jsonl(res.stdout)[0]["status"] == "classified"


def test_tampered_bundle_is_one_clear_error(tmp_path):
    bundle = golden_copy(tmp_path / "b")
    (bundle / "model_int8.tflite").write_bytes(b"\x00" * 100)
    res = run("classify", str(CELLS), "-m", str(bundle))
    assert res.exit_code == 2
    assert res.stderr.startswith("error: ") and "sha256" in res.stderr and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1


def test_missing_default_model_is_one_clear_error(monkeypatch, tmp_path):
    from edgekit.device import runtime

    monkeypatch.setattr(runtime, "default_bundle_dir", lambda: tmp_path / "none")
    res = run("classify", str(CELLS))
    assert res.exit_code == 2 and "no default model" in res.stderr


@pytest.mark.parametrize("cmd", ["classify", "camera", "screen", "sessions"])
def test_help(cmd):
    res = run(cmd, "--help")
    assert res.exit_code == 0 and "Usage" in res.output


def test_progress_bar_only_when_asked():
    res = run("classify", str(CELLS), "-m", str(GOLDEN), "--progress")
    assert "[##############################] 4/4" in res.stderr
    res = run("classify", str(CELLS), "-m", str(GOLDEN))  # stderr is not a terminal here
    assert "[#" not in res.stderr and "classified 4" in res.stderr


def test_progress_clear_erases_the_bar():
    from edgekit.device.output import Progress

    buf = io.StringIO()
    bar = Progress(2, enabled=True, stream=buf)
    bar.update()
    drawn = buf.getvalue()
    bar.clear()
    assert drawn.startswith("\r[") and buf.getvalue().endswith("\r" + " " * len(drawn) + "\r")
    silent = io.StringIO()
    Progress(2, enabled=False, stream=silent).update()
    assert silent.getvalue() == ""
