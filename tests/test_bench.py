"""edgekit bench: rows, statuses and files on a tiny bundle (not timings); accuracy and reference helpers."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.benchmarks.accuracy import patient_summary, row_accuracy
from edgekit.benchmarks.profiles import (
    PROFILES,
    compare_to_reference,
    detect_board,
    get_profile,
    load_reference,
    profile_cores,
)
from edgekit.benchmarks.report import COLUMNS, markdown_tables, to_csv
from edgekit.cli import main
from edgekit.errors import EdgekitError
from edgekit.manifest import (
    Artifact,
    Manifest,
    PatientRule,
    Preprocessing,
    TensorSpec,
    Thresholds,
    load_manifest,
    sha256_file,
)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, cell_folder) -> Path:
    """The shared tiny test bundle (fp32 + int8 TFLite) plus the Keras reference and three broken
    artifacts: one whose export failed, one whose file is missing, one whose runtime is unknown, and
    one whose sha256 does not match its file."""
    pytest.importorskip("tensorflow")  # the device suite (e.g. on an emulated Pi) has no TensorFlow
    from bundle_factory import make_bundle, tiny_model

    from edgekit.data import load_images, scan_dataset

    folder = tmp_path_factory.mktemp("bundle")
    ds = scan_dataset(cell_folder)
    x, _ = load_images(cell_folder, [i.path for i in ds.items], Preprocessing(input_size=(32, 32)))
    make_bundle(folder, train_x=x, input_size=(32, 32))
    manifest = load_manifest(folder)
    model = tiny_model((32, 32), 2, seed=0)  # same seed, untrained: the weights the TFLite files hold
    model.save(folder / "model.keras")
    keras_path = folder / "model.keras"
    fp32 = manifest.artifacts["tflite_fp32"]
    manifest.artifacts = {
        "keras": Artifact("keras", "model.keras", sha256_file(keras_path), keras_path.stat().st_size, "keras",
                          inputs=[TensorSpec("image", [-1, 32, 32, 3], "float32")],
                          outputs=[TensorSpec("probabilities", [-1, 2], "float32")]),
        **manifest.artifacts,
        "onnx_int8": Artifact("onnx_int8", "model_int8.onnx", "", 0, "onnxruntime", status="export_failed",
                              validation={"reason": "quantizer crashed"}),
        "tflite_fp16": Artifact("tflite_fp16", "model_fp16.tflite", "0" * 64, 10, "litert"),
        "tflite_dynamic": Artifact("tflite_dynamic", fp32.path, fp32.sha256, fp32.bytes, "no-such-runtime"),
        "onnx_fp32": Artifact("onnx_fp32", fp32.path, "f" * 64, fp32.bytes, "onnxruntime"),  # tampered
    }
    manifest.save(folder)
    return folder


@pytest.fixture(scope="module")
def data_with_unknown_class(tmp_path_factory, cell_folder) -> Path:
    """The cell folder plus a class the model does not know."""
    root = tmp_path_factory.mktemp("data") / "cells"
    shutil.copytree(cell_folder, root)
    extra = root / "Gametocyte"
    extra.mkdir()
    for src in sorted((root / "Parasitized").iterdir())[:2]:
        shutil.copy(src, extra / src.name)
    return root


def test_bench_end_to_end(tiny_bundle: Path, data_with_unknown_class: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    res = CliRunner().invoke(main, [
        "bench", str(tiny_bundle), "--data", str(data_with_unknown_class), "--threads", "1",
        "--profile", "host", "--runs", "5", "--warmup", "1", "--batch-size", "16", "-o", str(out),
        "--save-reference", str(tmp_path / "ref.csv"),
    ])
    assert res.exit_code == 0, res.output
    assert "'Gametocyte' (2 images) is not a label of the model" in res.output

    rows = json.loads((out / "bench.json").read_text())["rows"]
    by_fmt = {r["format"]: r for r in rows}
    assert [r["format"] for r in rows][0] == "keras"
    assert {f: r["status"] for f, r in by_fmt.items()} == {
        "keras": "ok", "tflite_int8": "ok", "tflite_fp32": "ok", "onnx_int8": "export failed",
        "tflite_fp16": "missing artifact", "tflite_dynamic": "runtime missing", "onnx_fp32": "failed",
    }
    assert "fails its sha256 check" in by_fmt["onnx_fp32"]["message"]
    assert "quantizer crashed" in by_fmt["onnx_int8"]["message"]
    for fmt in ("keras", "tflite_fp32", "tflite_int8"):
        r = by_fmt[fmt]
        assert r["threads"] == 1 and r["batch"] == 16
        assert r["n"] == 72  # 12 patients x 6 crops; the 2 unknown-class images are not scored
        assert r["patients"] == 12
        for key in ("accuracy", "sensitivity", "specificity", "auc", "patient_sensitivity",
                    "patient_specificity"):
            assert 0.0 <= r[key] <= 1.0, (fmt, key)
            assert r[f"{key}_lo"] - 1e-9 <= r[key] <= r[f"{key}_hi"] + 1e-9, (fmt, key)
        assert 0.0 <= r["patient_fraction_mae_pts"] <= 100.0
        assert r["peak_rss_mb"] > 10 and r["latency_p50_ms"] > 0 and r["throughput_ips"] > 0
    assert by_fmt["keras"]["agreement"] is None  # the reference itself: no agreement to report
    assert by_fmt["tflite_fp32"]["agreement"] >= 0.95 and by_fmt["tflite_fp32"]["mean_abs_dp"] < 1e-3
    assert by_fmt["tflite_int8"]["agreement"] >= 0.5
    assert by_fmt["tflite_fp32"]["size_mb"] > 0 and by_fmt["keras"]["peak_rss_mb"] > by_fmt["tflite_fp32"][
        "peak_rss_mb"]  # TensorFlow's process holds far more than LiteRT's

    with open(out / "bench.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert list(csv_rows[0]) == list(COLUMNS) and len(csv_rows) == 7
    assert csv_rows[0]["format"] == "keras" and float(csv_rows[0]["accuracy"]) == by_fmt["keras"]["accuracy"]
    md = (out / "bench.md").read_text()
    assert "| tflite_int8 | litert | 1 (1) | XNNPACK " in md and "**runtime missing**" in md
    for fmt in ("tflite_fp32", "tflite_int8"):
        assert by_fmt[fmt]["threads_effective"] == 1 and by_fmt[fmt]["delegate"] == "XNNPACK"
        done, total = map(int, by_fmt[fmt]["delegated_ops"].split("/"))
        assert 0 < done <= total
    ref = load_reference(tmp_path / "ref.csv")
    assert [r["format"] for r in ref] == ["keras", "tflite_int8", "tflite_fp32"]
    assert float(ref[1]["accuracy"]) == by_fmt["tflite_int8"]["accuracy"]
    # a reference that differs: int8 twice as fast and 10 points more accurate there, fp32 as measured
    ref[1]["latency_p50_ms"] = str(float(ref[1]["latency_p50_ms"]) / 2)
    ref[1]["accuracy"] = str(float(ref[1]["accuracy"]) + 0.1)
    verdicts = {(v["format"], v["metric"]): v["verdict"]
                for v in compare_to_reference(rows, ref, model="tiny-test")}
    assert len(verdicts) == 12
    assert verdicts[("tflite_int8", "latency_p50_ms")] == verdicts[("tflite_int8", "accuracy")] == "worse"
    assert verdicts[("tflite_fp32", "accuracy")] == "within"
    assert compare_to_reference(rows, ref, model="another-model") == []
    for png in ("bench_tradeoff.png", "bench_roc.png", "bench_patients.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png

    # the model comparison reads the same bench.json: one line per chosen format, patients as k/n
    from edgekit.benchmarks.compare import table

    lines = table({"tiny": out, "rand": out}, ["keras", "tflite_int8"], 1, {"rand"}).splitlines()
    assert len(lines) == 2 + 4 and lines[2].startswith("| tiny |") and "| keras | ok |" in lines[2]
    assert f"{by_fmt['tflite_int8']['accuracy'] * 100:.1f} (" in lines[3] and "/" in lines[3].split("|")[12]
    assert lines[4].count("untrained") == 4 and lines[4].startswith("| rand |")


def test_bench_bad_inputs(tiny_bundle: Path, cell_folder: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["bench", str(tmp_path / "nope"), "--data", str(cell_folder)])
    assert res.exit_code == 2 and "bundle not found" in res.output
    res = runner.invoke(main, ["bench", str(tiny_bundle), "--data", str(cell_folder), "--profile", "toaster"])
    assert res.exit_code == 2 and "unknown device profile 'toaster'" in res.output
    res = runner.invoke(main, ["bench", str(tiny_bundle), "--data", str(cell_folder), "--threads", "0"])
    assert res.exit_code == 2 and "thread counts must be positive" in res.output
    res = runner.invoke(main, ["bench", str(tiny_bundle)])  # the manifest names no split file
    assert res.exit_code == 2 and "no labelled data: pass --dataset" in res.output


def test_labelled_data_from_a_split_file(cell_folder: Path, tmp_path: Path) -> None:
    from edgekit.benchmarks.bench import load_labelled
    from edgekit.data import scan_dataset
    from edgekit.splits import make_split, save_split

    split = make_split(scan_dataset(cell_folder), test_fraction=0.3, val_fraction=0.2)
    save_split(split, tmp_path / "split.json")
    m = Manifest(labels=["Uninfected", "Parasitized"], positive_label="Parasitized",
                 preprocessing=Preprocessing(input_size=(16, 16)))
    data = load_labelled(tmp_path / "split.json", m, part="test")
    test = split.parts["test"]
    assert data.images.shape == (len(test), 16, 16, 3) and data.images.dtype == np.uint8
    assert data.groups.tolist() == [i.group for i in test]
    # the model's label order differs from the split's: indices are remapped by name
    assert data.y.tolist() == [m.labels.index(split.classes[i.label]) for i in test]
    assert data.unknown == {} and "test part" in data.source


def test_patient_summary_by_hand() -> None:
    rule = PatientRule(positive_fraction=0.25, negative_fraction=0.25)
    groups = np.array(["A"] * 4 + ["B"] * 4 + ["C"] * 4)
    y_pos = np.array([1, 1, 0, 0] + [0] * 4 + [1, 0, 0, 0], bool)  # A, C infected; B control
    called = np.array([1, 0, 0, 0] + [0] * 4 + [0] * 4, bool)  # A 25% (positive), C 0% (missed)
    s = patient_summary(y_pos, called, groups, rule)
    assert s["patients"] == 3
    # |25-50| + |0-0| + |0-25| = 50 points over 3 patients
    assert s["fraction_mae_points"] == pytest.approx(50 / 3)
    assert (s["sensitivity"]["k"], s["sensitivity"]["n"]) == (1, 2)
    assert (s["specificity"]["k"], s["specificity"]["n"]) == (1, 1)
    assert s["referred"] == 2  # 0/4 cells: the Wilson upper bound (49%) is not below 25%
    assert patient_summary(y_pos, called, np.arange(12).astype(str), rule) is None
    assert rule.decide(0, 200) == "negative"


def test_row_accuracy_agreement_and_unknown_labels() -> None:
    m = Manifest(labels=["Parasitized", "Uninfected"], positive_label="Parasitized",
                 thresholds=Thresholds(0.5, 0.5))
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], np.float32)
    ref = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.3, 0.7]], np.float32)
    y = np.array([0, 1, 1, -1])  # the last image's class is unknown to the model
    acc = row_accuracy(probs, y, np.array(["a", "b", "c", "d"]), m, reference=ref, n_boot=50)
    assert acc["agreement"] == 0.75
    assert acc["cell"]["n"] == 3 and acc["cell"]["confusion"] == {"tp": 1, "fn": 0, "fp": 1, "tn": 1}
    assert acc["patient"] is None  # every image is its own group


def test_reference_comparison_and_board_detection(tmp_path: Path) -> None:
    ref_file = tmp_path / "board.csv"
    ref_file.write_text("# measured on a Pi\nmodel,format,threads,latency_p50_ms,throughput_ips,peak_rss_mb,"
                        "accuracy,tolerance,accuracy_tolerance\n*,tflite_int8,4,10,400,100,0.95,0.2,0.01\n")
    ref = load_reference(ref_file)
    assert len(ref) == 1
    rows = [{"format": "tflite_int8", "threads": 4, "status": "ok", "latency_p50_ms": 13.0,
             "throughput_ips": 410.0, "peak_rss_mb": 70.0, "accuracy": 0.95}]
    verdicts = {c["metric"]: c["verdict"] for c in compare_to_reference(rows, ref, model="m")}
    assert verdicts == {"latency_p50_ms": "worse", "throughput_ips": "within", "peak_rss_mb": "better",
                        "accuracy": "within"}
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")
    assert detect_board(model) == "rpi5"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    assert detect_board(model) == "rpi4"
    assert detect_board(tmp_path / "absent") is None
    for board in ("rpi4", "rpi5", "x86_64"):
        load_reference(board)  # the committed files parse
    with pytest.raises(EdgekitError, match="unknown device profile"):
        get_profile("toaster")


def test_profile_cores_never_exceed_the_machine() -> None:
    cores, warning = profile_cores(PROFILES["rpi4"])
    assert 1 <= len(cores) <= 4
    assert (warning is None) == (len(cores) == 4)


def test_markdown_and_csv_from_rows() -> None:
    rows = [{"format": "keras", "runtime": "keras", "threads": 2, "status": "ok", "size_mb": 1.5,
             "latency_p50_ms": 3.25, "accuracy": 0.9, "accuracy_lo": 0.85, "accuracy_hi": 0.93,
             "agreement": 1.0, "batch": 32, "throughput_ips": 100.0},
            {"format": "onnx_int8", "runtime": "onnxruntime", "threads": 2, "status": "export failed",
             "message": "boom"}]
    md = markdown_tables(rows)
    assert "| keras | keras | 2 | – | ok | 1.500 |" in md and "90.0 (85.0–93.0)" in md
    assert "onnx_int8 @2: **export failed** — boom" in md
    text = to_csv(rows)
    assert text.splitlines()[0].split(",")[:3] == ["format", "runtime", "threads"]
    assert text.splitlines()[2].startswith("onnx_int8,onnxruntime,2,,export failed,boom")


def test_bench_command_is_light() -> None:
    code = ("import sys, edgekit.benchmarks.commands; heavy = {'tensorflow', 'keras', 'matplotlib', 'numpy',"
            " 'onnxruntime', 'cv2'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bench_on_a_faked_pi_reports_board_threads_and_delegates(cell_folder: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A Raspberry Pi 4 device-tree model (faked through the environment) picks the rpi4 profile and its
    reference file; each row reports the threads the process really ran and the delegate/provider used."""
    from device_helpers import GOLDEN

    fake = tmp_path / "model"
    fake.write_bytes(b"Raspberry Pi 4 Model B Rev 1.5\x00")
    monkeypatch.setenv("EDGEKIT_DEVICE_TREE_MODEL", str(fake))
    assert detect_board() == "rpi4"
    ref = tmp_path / "rpi4.csv"
    ref.write_text("model,format,threads,latency_p50_ms,throughput_ips,peak_rss_mb,accuracy\n"
                   "*,tflite_fp32,2,1000,1,1,0.5\n")
    out = tmp_path / "bench"
    res = CliRunner().invoke(main, [
        "bench", str(GOLDEN), "--data", str(cell_folder), "--threads", "2",
        "--formats", "tflite_fp32,onnx_fp32", "--runs", "3", "--warmup", "1", "--no-plots", "-o", str(out),
        "--reference", str(ref)])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "bench.json").read_text())
    assert result["meta"]["profile"]["name"] == "rpi4"
    assert result["meta"]["host"]["board"] == "Raspberry Pi 4 Model B Rev 1.5"
    rows = {r["format"]: r for r in result["rows"]}
    assert rows["tflite_fp32"]["delegate"] == "XNNPACK"
    assert rows["onnx_fp32"]["delegate"] == "CPUExecutionProvider"
    assert rows["onnx_fp32"]["intra_op_threads"] == 2
    cores = len(result["meta"]["profile"]["cores_used"])
    for r in (rows["tflite_fp32"], rows["onnx_fp32"]):  # the pool's threads, whatever the cores
        assert r["threads_effective"] == 2, (r["format"], r["threads_effective"], cores)
    assert "reference " + str(ref) + ": 4 comparisons" in res.output
    assert "| tflite_fp32 | litert | 2 (2) | XNNPACK" in (out / "bench.md").read_text()
    monkeypatch.setenv("EDGEKIT_DEVICE_TREE_MODEL", str(tmp_path / "absent"))
    assert detect_board() is None and get_profile("auto").name == "host"


def test_a_missing_runtime_names_the_extra_that_installs_it(tmp_path, monkeypatch):
    """On a device install the Keras reference row cannot run: its line says what would install it,
    not only "runtime 'keras' is not installed"."""
    from edgekit.benchmarks import bench

    (tmp_path / "model.keras").write_bytes(b"k")
    manifest = Manifest(["Parasitized", "Uninfected"], positive_label="Parasitized")
    manifest.artifacts = {"keras": Artifact("keras", "model.keras", "0" * 64, 1, "keras")}
    monkeypatch.setattr(bench, "runtime_installed", lambda runtime: False)
    rows = bench.plan_rows(manifest, tmp_path, None, [1], get_profile("host"))
    assert [r["status"] for r in rows] == ["runtime missing"]
    assert "pip install 'edgekit[train]'" in rows[0]["message"], rows[0]["message"]
