"""`edgekit adapt` on a tiny model: a tiny base run (generated NIH-like cells), a tiny generated site
(another stain, cells named FIELD__INDEX.png as `edgekit cells` writes them), fine-tuning, the site
decision, int8 export and validation, provenance, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from bundle_factory import make_tiny_run  # noqa: E402

SIZE = 32
LENIENT_GATE = ("--gate-error", "100", "--gate-auc", "0")


def make_site(root: Path, fields: int = 15, per_field: int = 10, seed: int = 0) -> Path:
    """Site crops: bluish-grey discs (another stain), parasitized ones with a dark dot, 2 per field."""
    import cv2

    rng = np.random.default_rng(seed)
    for f in range(fields):
        for k in range(per_field):
            parasitized = k < 2
            size = int(rng.integers(40, 60))
            img = np.zeros((size, size, 3), np.uint8)
            colour = tuple(int(v) for v in rng.integers((150, 150, 170), (185, 185, 205)))
            cv2.circle(img, (size // 2, size // 2), int(size * 0.42), colour, -1)
            if parasitized:
                c = tuple(int(v) for v in rng.integers(size * 0.35, size * 0.65, 2))
                cv2.circle(img, c, max(2, size // 9), (60, 20, 90), -1)
            cls = "Parasitized" if parasitized else "Uninfected"
            path = root / cls / f"SITE{f:04d}__{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), img[:, :, ::-1])
    return root


def make_base_run(root: Path, cells: Path) -> Path:
    """A tiny trained run folder (model.keras + manifest + split), as `edgekit train` leaves one."""
    return make_tiny_run(root, cells, SIZE, epochs=4, name="base", training={"model": {"arch": "resnet"}})


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, cell_folder) -> Path:
    return make_base_run(tmp_path_factory.mktemp("base"), cell_folder)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return make_site(tmp_path_factory.mktemp("site") / "cells")


def _cli(*args: str):
    from edgekit.cli import main

    return CliRunner().invoke(main, list(args))


# with --allow-drop the tiny models' int8 may fail its bounds: a float file keeps a model a device can run
FLOAT_TOO = ("--formats", "tflite_int8,tflite_fp32")


def test_adapt_writes_a_validated_site_bundle_with_provenance(base_run, site, tmp_path):
    from edgekit.manifest import load_manifest, sha256_file, verify_artifact

    out = tmp_path / "site_bundle"
    # --allow-drop: a 600-parameter model fine-tuned for a few steps sits near p = 0.5, where int8 may
    # flip a few of 30 validation calls; the validation itself must still run and be recorded
    # lenient gate bounds: this test is about what is recorded; the gate's refusals are tested below
    res = _cli("adapt", str(base_run), "--data", str(site), "-o", str(out), "--epochs", "4", "--lr", "0.05",
               "--batch-size", "16", "--block", "1", "--allow-drop", *FLOAT_TOO,
               "--cache-dir", str(tmp_path / "cache"), *LENIENT_GATE)
    assert res.exit_code == 0, res.output
    assert "unsigned: devices refuse it" in res.output and "edgekit trust sign" in res.output
    m = load_manifest(out)
    int8 = m.artifacts["tflite_int8"]
    assert verify_artifact(out, int8) and int8.status in ("ok", "failed_validation")
    assert 0.5 <= int8.validation["agreement"] <= 1.0 and (out / "validation.json").is_file()
    ad = m.training["adaptation"]
    assert ad["base_keras_sha256"] == sha256_file(base_run / "model.keras")
    assert len(ad["site_data_sha256"]) == 64
    assert sum(ad["site_fields"].values()) == 15 and ad["site_fields"]["test"] >= 1
    assert sum(sum(c.values()) for c in ad["site_cells"].values()) == 150
    # base share 0.5: as many base crops as site training crops, as far as the tiny base has them
    assert 0 < ad["base_cells_mixed_in"] <= sum(ad["site_cells"]["train"].values())
    # the decision was chosen again on the site's validation fields, on the int8 outputs a device runs
    # when the kept epoch's int8 kept the export's bounds (else the device runs the float file: Keras's)
    decided_on = "tflite_int8" if ad["best_int8_within_bounds"] else "Keras"
    assert m.thresholds.source.startswith(f"site validation crops (n=30), {decided_on} outputs")
    _assert_decision_model_is_the_exported_int8(out, site, m)
    assert m.patient_rule.source.startswith("site validation fields")
    site_eval = m.evaluation["site"]
    # measured through what a device runs: int8 when it kept its bounds, else the float file
    assert site_eval["format"] == ("tflite_int8" if int8.status == "ok" else "tflite_fp32")
    assert site_eval["test"]["cells"] == 10 * ad["site_fields"]["test"]
    assert 0.0 <= site_eval["test"]["auc"]["value"] <= 1.0
    # the site split is in the bundle and groups cells by field: no field in two parts
    split = json.loads((out / "site_split.json").read_text())
    owners: dict[str, str] = {}
    for part, items in split["parts"].items():
        for _, _, group in items:
            assert owners.setdefault(group, part) == part
    assert m.training["split_file"] == "site_split.json"  # relative to the bundle: no machine path
    assert str(tmp_path) not in (out / "manifest.json").read_text()
    # the gate: measured on the test fields (labelled cells only: no field images here), recorded
    gate = m.domain.gate
    assert gate.test_fields == sorted(json.loads((out / "site_fields.json").read_text())["test"])
    assert gate.measured["auc_estimate"] == site_eval["test"]["auc"]["value"]
    assert "auc" not in gate.measured  # under 10 positive test cells: an AUC interval bounds nothing
    # the error is held by the upper 95% bound of its mean over the test fields; the mean beside it
    error = site_eval["test"]["parasitemia"]
    assert gate.measured["parasitemia_error_mean"] == error["mae_points"]
    assert gate.measured["parasitemia_error"] == error["mae_upper95_points"] >= error["mae_points"]
    assert "labelled cells only" in gate.source and gate.passed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def _assert_decision_model_is_the_exported_int8(bundle: Path, site: Path, m) -> None:
    """The int8 model the site decision was chosen on (quantized before export) is the exported one:
    the same probabilities on the validation crops."""
    from edgekit.adapt import AdaptConfig, _arrays, _calibration_crops, _deployed_probs, device_probs
    from edgekit.formats import get
    from edgekit.splits import load_split

    split, _ = load_split(bundle / "site_split.json", site)
    x_cal = _calibration_crops((get("tflite_int8"),), split, m.labels, m.preprocessing, AdaptConfig(), None)
    xv = _arrays(split, "val", m.labels, m.preprocessing, None)[0]
    predict, outputs, cleanup = _deployed_probs(bundle / m.artifacts["keras"].path, x_cal, m.positive_index,
                                                bundle)
    try:
        assert outputs == "tflite_int8"
        np.testing.assert_array_equal(predict(xv), device_probs(bundle, m, "tflite_int8")(xv))
    finally:
        cleanup()


def test_adapt_bad_input_is_one_clear_line(base_run, site, tmp_path):
    # a site with one class only
    one = tmp_path / "one"
    shutil.copytree(site / "Uninfected", one / "Uninfected")
    res = _cli("adapt", str(base_run), "--data", str(one), "-o", str(tmp_path / "o1"))
    assert res.exit_code != 0 and "only one class" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o1").exists()
    # a device bundle without its Keras model
    bare = tmp_path / "bare"
    shutil.copytree(base_run, bare)
    m = json.loads((bare / "manifest.json").read_text())
    del m["artifacts"]["keras"]
    (bare / "manifest.json").write_text(json.dumps(m))
    res = _cli("adapt", str(bare), "--data", str(site), "-o", str(tmp_path / "o2"))
    assert res.exit_code != 0 and "no trainable model" in res.output
    assert res.output.strip().count("\n") == 0
    # asking for more training fields than there are
    res = _cli("adapt", str(base_run), "--data", str(site), "-o", str(tmp_path / "o3"),
               "--train-fields", "99")
    assert res.exit_code != 0 and "training fields" in res.output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_count_cutoff_calls_as_many_as_labelled():
    from edgekit.thresholds import choose_thresholds, count_cutoff

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(20, bool), np.zeros(980, bool)]
    p = np.clip(np.r_[rng.normal(0.8, 0.15, 20), rng.normal(0.2, 0.15, 980)], 0, 1)
    cut = count_cutoff(y, p)
    assert (p >= cut).sum() == 20
    t = choose_thresholds(y, p, method="count")
    assert t.cutoff == cut and t.negative <= cut <= t.positive
    assert choose_thresholds(y, p).cutoff < cut  # Youden calls more at 2% prevalence


def test_site_metrics_numbers():
    from edgekit.adapt import site_metrics

    y = np.array([1, 0, 0, 0, 1, 0, 0, 0], bool)
    p = np.array([0.9, 0.1, 0.2, 0.6, 0.8, 0.1, 0.3, 0.2])
    fields = np.array(["a"] * 4 + ["b"] * 4)
    m = site_metrics(y, p, fields, cutoff=0.5)
    assert m["auc"]["value"] == pytest.approx(1.0)
    assert m["at_specificity_0.995"]["sensitivity"] == 1.0
    # field a: 2 called of 4 (50%) vs 1 labelled (25%); field b: 25% vs 25%
    assert m["parasitemia"]["mae_points"] == pytest.approx(12.5)
    assert m["parasitemia"]["bias_points"] == pytest.approx(12.5)


def test_field_count_cutoff_counts_every_found_cell():
    from edgekit.adapt import field_count_cutoff

    # two fields: 100 found cells at 2% labelled, 50 found cells at 0%; the finder's extra objects
    # (high p, no label) are counted as on the device, so the cutoff calls exactly 2 cells in all
    f1 = np.r_[np.full(3, 0.95), np.linspace(0.0, 0.5, 97)]
    f2 = np.r_[0.9, np.linspace(0.0, 0.4, 49)]
    cut = field_count_cutoff([f1, f2], [0.02, 0.0])
    assert ((f1 >= cut).sum() + (f2 >= cut).sum()) == 3  # ties at 0.95 are all called
    assert cut == 0.95
    assert field_count_cutoff([f1, f2], [0.0, 0.0]) == 1.0  # nothing labelled: call nothing


def test_labelled_parasitemia_reads_cells_json(tmp_path):
    from edgekit.adapt import labelled_parasitemia
    from edgekit.errors import DataError

    (tmp_path / "cells.json").write_text(json.dumps({"per_field": [
        {"field": "A.JPG", "labelled": {"Parasitized": 2, "Uninfected": 98}},
        {"field": "B.JPG", "labelled": {"Uninfected": 50}}]}))
    assert labelled_parasitemia(tmp_path) == {"A": 0.02, "B": 0.0}
    with pytest.raises(DataError, match="cells.json"):
        labelled_parasitemia(tmp_path / "nowhere")


def test_a_whole_field_cutoff_is_chosen_on_fully_labelled_fields_only(tmp_path):
    """A validation field whose boxes cover too few of its found cells is no truth to choose a cutoff
    by (its unboxed parasites read as 0%); when every field is so, all are used."""
    from edgekit.adapt import cutoff_fields, incompletely_labelled_fields

    (tmp_path / "cells.json").write_text(json.dumps({"per_field": [
        {"field": "A.JPG", "found": 100, "labelled": {"Parasitized": 2, "Uninfected": 90}},
        {"field": "B.JPG", "found": 100, "labelled": {"Uninfected": 40}},
        {"field": "C.JPG", "found": 50, "labelled": {"Uninfected": 45}}]}))
    assert incompletely_labelled_fields(tmp_path) == {"B"}
    assert incompletely_labelled_fields(tmp_path / "nowhere") == set()
    whole = {k: np.zeros(3) for k in "ABC"}
    said: list[str] = []
    assert sorted(cutoff_fields(whole, ["A", "B"], tmp_path, said.append)) == ["A"]
    assert said == ["cutoff: 1 incompletely labelled validation fields left out"]
    assert sorted(cutoff_fields(whole, ["B"], tmp_path, said.append)) == ["B"]


def test_adapt_names_the_test_fields_whose_boxes_miss_cells(tmp_path):
    """The test fields' error is split by label coverage in the record and said in one line, so a
    site knows which boxes to complete; nothing is said when every field is fully labelled."""
    from edgekit.adapt import label_coverage_note

    (tmp_path / "cells.json").write_text(json.dumps({"per_field": [
        {"field": "A.JPG", "found": 100, "labelled": {"Parasitized": 2, "Uninfected": 90}},
        {"field": "B.JPG", "found": 100, "labelled": {"Uninfected": 40}}]}))
    whole = {"per_field": {"A": {"called": 0.03, "labelled": 0.02}, "B": {"called": 0.10, "labelled": 0.0}}}
    note = label_coverage_note(whole, tmp_path)
    assert note is not None and note.startswith("1 of 2 test fields look incompletely labelled (B)")
    assert "error 10.00 points there, 1.00 on the rest" in note
    assert whole["label_coverage"]["incompletely_labelled"] == ["B"]
    assert label_coverage_note({"per_field": {"A": {"called": 0.03, "labelled": 0.02}}}, tmp_path) is None


def test_a_site_is_measured_through_a_format_a_device_can_run():
    """int8 when it passed its validation, else a float format that did; none: one clear error, not a
    bundle whose only model every device refuses (adapting from reviewed, near-cutoff cells can fail
    int8's agreement bound)."""
    from types import SimpleNamespace as NS

    from edgekit.adapt import device_format
    from edgekit.errors import BundleError

    def manifest(**status):
        arts = {k: NS(runtime="keras" if k == "keras" else "litert", status=v) for k, v in status.items()}
        return NS(artifacts=arts)

    assert device_format(manifest(keras="ok", tflite_int8="ok", tflite_fp32="ok")) == "tflite_int8"
    failed = "failed_validation"
    assert device_format(manifest(keras="ok", tflite_int8=failed, tflite_fp32="ok")) == "tflite_fp32"
    with pytest.raises(BundleError, match=f"tflite_int8: {failed}.*--formats tflite_int8,tflite_fp32"):
        device_format(manifest(keras="ok", tflite_int8=failed))


def test_adapt_stops_early_and_field_count_needs_fields(base_run, site, tmp_path):
    from edgekit.adapt import AdaptConfig
    from edgekit.errors import DataError
    from edgekit.manifest import load_manifest

    with pytest.raises(DataError, match="patience"):
        AdaptConfig(patience=0)
    res = _cli("adapt", str(base_run), "--data", str(site), "-o", str(tmp_path / "o"),
               "--cutoff", "field-count")
    assert res.exit_code != 0 and "needs --field-images" in res.output and "Traceback" not in res.output
    # a learning rate that cannot improve the model (1e-9): patience 1 stops after one epoch of 20
    out = tmp_path / "early"
    res = _cli("adapt", str(base_run), "--data", str(site), "-o", str(out), "--epochs", "20",
               "--patience", "1", "--lr", "1e-9", "--batch-size", "16", "--block", "1", "--allow-drop",
               *FLOAT_TOO, *LENIENT_GATE)
    assert res.exit_code == 0, res.output
    ad = load_manifest(out).training["adaptation"]
    assert len(ad["history"]) < 20 and ad["config"]["patience"] == 1
    # every epoch was judged on its int8 quantization too (the bundle exports int8)
    assert {"int8_val_auc", "int8_agreement", "int8_accuracy_drop"} <= set(ad["history"][0])


def test_train_fields_are_spread_over_the_consecutive_fields():
    from edgekit.adapt import spread

    fields = [f"F{i:03d}" for i in range(100)]
    picked = spread(fields[::-1], 10)
    assert picked == [f"F{i:03d}" for i in range(5, 100, 10)]  # one from each tenth, in order
    assert spread(fields, 100) == fields and spread(fields, 1) == ["F050"]


def test_adapt_starts_from_a_packed_bundle_signs_it_and_a_failed_gate_vouches_for_nothing(
        base_run, site, tmp_path, monkeypatch):
    """What a user has: a packed bundle (int8 + Keras + replay sample), its training split nowhere on
    this machine. A gate its test fields cannot meet: the bundle is written, signed, says NOT
    VALIDATED on every field, and adapt exits 1 with the numbers."""
    from edgekit.device.domain import field_verdict
    from edgekit.manifest import load_manifest

    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    res = _cli("export", str(run), "--formats", "tflite_int8", "--allow-drop")
    assert res.exit_code == 0, res.output
    packed = tmp_path / "shipped" / "bundle"
    res = _cli("pack", str(run), "-o", str(packed), "--formats", "tflite_int8", "--replay", "40")
    assert res.exit_code == 0, res.output
    m = load_manifest(packed)
    assert set(m.artifacts["keras"].extra_files) == {"replay.npz"} and m.training["replay"]["crops"] == 40
    assert not (packed / m.training["split_file"]).exists()  # nothing to fall back on but the replay
    monkeypatch.setenv("EDGEKIT_SIGNING_KEY", str(Path(__file__).parent / "fixtures" / "test_signing.key"))
    out = tmp_path / "site"
    res = _cli("adapt", str(packed), "--data", str(site), "-o", str(out), "--epochs", "2", "--lr", "1e-9",
               "--batch-size", "16", "--block", "1", "--allow-drop", *FLOAT_TOO,
               "--gate-error", "0.0001", "--gate-auc", "1.0")
    assert res.exit_code == 1, res.output
    assert "signed with key" in res.output and "site gate FAILED" in res.output
    assert "NOT VALIDATED" in res.output and "Traceback" not in res.output
    site_manifest = load_manifest(out)
    assert site_manifest.training["adaptation"]["base_cells_mixed_in"] > 0  # from the replay sample
    assert not site_manifest.domain.gate.passed
    # whatever the cells look like, the failed bundle vouches for no field
    verdict = field_verdict([0.0] * 20, site_manifest.domain)
    assert verdict["ok"] is False and "site gate FAILED" in verdict["why"]
    res = _cli("verify", str(out))
    assert "site gate FAILED" in res.output


def test_adapt_refuses_a_base_whose_signature_fails(site, tmp_path):
    """A site bundle inherits what its base vouches for: an edited copy of the signed default is not
    adapted (one line), while its untouched copy gets past the trust check."""
    from edgekit.adapt import trainable_model
    from edgekit.device.runtime import default_bundle_dir
    from edgekit.errors import BundleError

    good = tmp_path / "default"
    shutil.copytree(default_bundle_dir(), good)
    manifest, keras_path, _ = trainable_model(good)
    assert keras_path.name == "model.keras" and "replay.npz" in manifest.artifacts["keras"].extra_files
    bad = tmp_path / "edited"
    shutil.copytree(default_bundle_dir(), bad)
    data = json.loads((bad / "manifest.json").read_text())
    data["thresholds"]["cutoff"] = 0.01
    (bad / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="refusing to adapt"):
        trainable_model(bad)
    res = _cli("adapt", str(bad), "--data", str(site), "-o", str(tmp_path / "o"))
    assert res.exit_code != 0 and "refusing to adapt" in res.output and "Traceback" not in res.output


def test_field_error_cutoff_weighs_each_field_as_the_gate_does():
    """Two very confident false calls on a field without parasites: matching the total count spends
    the labelled count on them; the field-error cutoff gives the smallest mean per-field error."""
    from edgekit.adapt import field_count_cutoff, field_error_cutoff

    clean = np.array([0.995, 0.993] + [0.1] * 98)  # no parasite labelled
    infected = np.array([0.99, 0.985, 0.98] + [0.1] * 97)  # 3 labelled parasites
    truth = [0.0, 0.03]
    count_cut = field_count_cutoff([clean, infected], truth)
    error_cut = field_error_cutoff([clean, infected], truth)

    def mean_error(cut: float) -> float:
        return (abs((clean >= cut).mean() - truth[0]) + abs((infected >= cut).mean() - truth[1])) / 2

    assert count_cut == 0.99  # the 3 highest of all: two false calls and one true
    assert error_cut == 0.98
    assert round(mean_error(error_cut), 6) == 0.01 < round(mean_error(count_cut), 6) == 0.02
    assert mean_error(error_cut) < mean_error(1.0)  # better than calling nothing
    assert field_error_cutoff([clean], [0.0]) == 1.0  # nothing labelled: call nothing
    assert field_error_cutoff([], []) == 1.0


def test_the_weight_average_follows_every_step_and_is_only_lent_to_the_model():
    import keras

    from edgekit.adapt import WeightAverage

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.BatchNormalization()])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, y = np.random.default_rng(0).normal(size=(32, 3)), np.zeros((32, 2))
    seen: list[list[np.ndarray]] = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda *_, **__: seen.append(model.get_weights()))
    averaged = WeightAverage.for_steps(4)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False, callbacks=[record, averaged.callback])
    assert averaged.decay == 0.75 and len(seen) == 8
    expected = [w.astype(np.float64) for w in seen[0]]
    for step in seen[1:]:
        expected = [0.75 * e + 0.25 * w for e, w in zip(expected, step, strict=True)]
    own = model.get_weights()
    with averaged.swapped_in():
        lent = model.get_weights()
    # every variable, the batch-norm statistics too, is the average while lent, the model's own after
    assert len(lent) == 6
    for got, want in zip(lent, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    for got, want in zip(model.get_weights(), own, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not np.allclose(lent[0], own[0])


def test_hard_negatives_are_the_base_models_highest_scoring_uninfected_cells(base_run, site, tmp_path):
    from edgekit.data import load_images
    from edgekit.export.bundle import load_keras
    from edgekit.manifest import load_manifest
    from edgekit.parts import predict_arrays

    out = tmp_path / "hard"
    res = _cli("adapt", str(base_run), "--data", str(site), "-o", str(out), "--epochs", "1", "--block", "1",
               "--negatives-per-field", "3", "--hard-negatives", "2", "--allow-drop", *FLOAT_TOO,
               *LENIENT_GATE)
    assert res.exit_code == 0, res.output
    assert "hard negatives" in res.output
    kept = {p for p, _, _ in json.loads((out / "site_split.json").read_text())["parts"]["train"]}
    base = load_manifest(base_run)
    model = load_keras(base_run / "model.keras")
    train_fields = {p.split("/")[1].split("__")[0] for p in kept}
    for fld in sorted(train_fields):
        negatives = sorted(f"Uninfected/{f.name}" for f in (site / "Uninfected").glob(f"{fld}__*.png"))
        x, _ = load_images(site, negatives, base.preprocessing)
        scores = predict_arrays(model, x)[:, base.positive_index]
        top2 = {negatives[i] for i in np.argsort(-scores, kind="stable")[:2]}
        mine = {p for p in kept if p.startswith("Uninfected/") and f"/{fld}__" in p}
        assert len(mine) == 3 and top2 <= mine, fld


def test_the_same_data_and_seed_give_the_same_site_bundle(base_run, site, tmp_path):
    """Fine-tuning runs with TensorFlow's ops deterministic: two adapts with one seed write the same
    model, epoch by epoch, and the process's setting is left as it was."""
    from tensorflow.python.framework import config

    from edgekit.manifest import load_manifest

    runs = []
    for name in ("first", "second"):
        out = tmp_path / name
        res = _cli("adapt", str(base_run), "--data", str(site), "-o", str(out), "--epochs", "3",
                   "--lr", "0.05", "--batch-size", "8", "--block", "1", "--allow-drop", *FLOAT_TOO,
                   *LENIENT_GATE)
        assert res.exit_code == 0, res.output
        m = load_manifest(out)
        runs.append(([h["loss"] for h in m.training["adaptation"]["history"]],
                     {k: a.sha256 for k, a in m.artifacts.items() if a.runtime != "keras"}))
    assert runs[0] == runs[1]
    assert not config.is_op_determinism_enabled()


def test_hard_objects_are_those_the_base_model_scores_highest(tmp_path):
    """--hard-objects: of the found objects learnt per training field, those the base model scores
    highest come first and the rest at random; a field whose boxes miss cells gives none."""
    import cv2

    from edgekit.adapt import AdaptConfig, _found_objects
    from edgekit.cells import OBJECTS_DIR
    from edgekit.manifest import Preprocessing

    (tmp_path / "cells.json").write_text(json.dumps({"per_field": [
        {"field": "A.JPG", "found": 10, "labelled": {"Uninfected": 9}},
        {"field": "B.JPG", "found": 100, "labelled": {"Uninfected": 40}}]}))
    (tmp_path / OBJECTS_DIR).mkdir()
    value = {}
    for field in "AB":
        for k in range(8):
            name = f"{OBJECTS_DIR}/{field}__{k}.png"
            value[name] = 10 * k + 5  # the crop's grey level says which object it is
            cv2.imwrite(str(tmp_path / name), np.full((20, 20, 3), value[name], np.uint8))
    pre = Preprocessing(input_size=(8, 8), stain="none")
    said: list[list[str]] = []

    def scores(paths: list[str]) -> np.ndarray:  # the base model's: objects 5 and 2 score highest
        said.append(paths)
        return np.array([{5: 0.9, 2: 0.8}.get(int(p.split("__")[1][0]), 0.1) for p in paths])

    def levels(cfg: AdaptConfig) -> list[int]:
        x = _found_objects(tmp_path, ["A", "B"], cfg, pre, None, scores)
        return [int(round(float(v))) for v in x.reshape(len(x), -1).mean(axis=1)]

    hard = levels(AdaptConfig(objects_per_field=3, hard_objects=2))
    assert len(hard) == 3 and hard[:2] == [25, 55]  # objects 2 and 5 first (file order), then one at random
    assert said and all(p.startswith(f"{OBJECTS_DIR}/A__") for p in said[0])  # B is incompletely labelled
    said.clear()
    plain = levels(AdaptConfig(objects_per_field=3))
    assert not said and len(plain) == 3  # without hard objects the base model is not asked
    # more hard objects than objects per field: the three highest (ties in file order), none at random
    assert levels(AdaptConfig(objects_per_field=3, hard_objects=9)) == [5, 25, 55]



def test_hard_objects_survive_an_unreadable_object(base_run, tmp_path):
    """The base model's scores stay aligned with the objects when one of them cannot be read: it is
    never a hard one, and the others are still scored (before, the scores came back one short)."""
    import dataclasses

    import cv2

    from edgekit.adapt import AdaptConfig, _found_objects, base_scores
    from edgekit.cells import OBJECTS_DIR
    from edgekit.manifest import load_manifest

    m = load_manifest(base_run)
    (tmp_path / "cells.json").write_text(json.dumps({"per_field": [
        {"field": "A.JPG", "found": 10, "labelled": {"Uninfected": 9}}]}))
    (tmp_path / OBJECTS_DIR).mkdir()
    for k in range(4):
        cv2.imwrite(str(tmp_path / OBJECTS_DIR / f"A__{k}.png"), np.full((20, 20, 3), 40 * k + 30, np.uint8))
    (tmp_path / OBJECTS_DIR / "A__9.png").write_bytes(b"not an image")
    scores = base_scores(base_run / "model.keras", tmp_path, m.preprocessing, m.positive_index, None)
    got = scores([f"{OBJECTS_DIR}/A__{k}.png" for k in (0, 9, 1)])
    assert got.shape == (3,) and got[1] == -np.inf and np.isfinite(got[[0, 2]]).all()
    raw = dataclasses.replace(m.preprocessing, stain="none")
    x = _found_objects(tmp_path, ["A"], AdaptConfig(objects_per_field=5, hard_objects=2), raw, None, scores)
    assert len(x) == 4  # the four readable objects; the unreadable one left out as before


def test_field_error_cutoff_takes_the_highest_cutoff_within_one_standard_error():
    """13 fields of 100 cells: on 6 a false call at 0.7, on 7 a labelled parasite scored 0.7 (two
    others at 0.95 everywhere). The smallest mean error is at 0.7 (0.0046 against 0.0054 at 0.95),
    within one standard error (0.0014) of 0.95: the rule takes 0.95. Under MIN_SE_FIELDS fields the
    smallest error stays; and calling nothing (1.0) is not taken while a cutoff below it is within."""
    from edgekit.adapt import MIN_SE_FIELDS, field_error_cutoff

    def field(low: float, truth: float) -> tuple[np.ndarray, float]:
        q = np.full(100, 0.1)
        q[:2], q[2] = 0.95, low
        return q, truth

    false_call, low_parasite = field(0.7, 0.02), field(0.7, 0.03)
    fields = [false_call] * 6 + [low_parasite] * 7
    probs, truth = [f[0] for f in fields], [f[1] for f in fields]
    assert field_error_cutoff(probs, truth) == 0.95
    few = [false_call] * 4 + [low_parasite] * 5  # 9 fields: the smallest error, at 0.7
    assert len(few) < MIN_SE_FIELDS
    assert field_error_cutoff([f[0] for f in few], [f[1] for f in few]) == 0.7

    def lone(p: float, truth: float) -> tuple[np.ndarray, float]:
        q = np.full(100, 0.1)
        q[0] = p
        return q, truth

    # 6 fields with one parasite at 0.9, 5 with a false call at 0.9: calling nothing is within one
    # standard error of 0.9 and is not taken
    eleven = [lone(0.9, 0.01)] * 6 + [lone(0.9, 0.0)] * 5
    assert field_error_cutoff([f[0] for f in eleven], [f[1] for f in eleven]) == 0.9


def test_fine_tuning_that_diverges_stops_and_says_so(base_run, site, tmp_path):
    """A learning rate that blows the weights up (loss NaN) stops at that epoch with one line that
    says so and keeps the base model: before, every later epoch was trained on NaN weights."""
    from edgekit.manifest import load_manifest

    out = tmp_path / "diverged"
    res = _cli("adapt", str(base_run), "--data", str(site), "-o", str(out), "--epochs", "6",
               "--lr", "1e12", "--batch-size", "16", "--block", "1", "--allow-drop", *FLOAT_TOO,
               *LENIENT_GATE)
    assert "Traceback" not in res.output
    assert "fine-tuning diverged (loss " in res.output
    assert "stopped; the base model is kept (try a lower --lr than 1e+12)" in res.output
    ad = load_manifest(out).training["adaptation"]
    assert ad["best_epoch"] == 0 and ad["diverged_at_epoch"] == 1 and ad["history"] == []


def test_averaged_runs_hold_the_mean_of_every_weight_and_batch_norms_measured_again():
    """--members: the average of several runs' weights, then each batch norm's moving statistics set to
    the mean over one pass of the training batches (the runs' own statistics do not fit the average)."""
    import keras
    import tensorflow as tf

    from edgekit.adapt import _average_weights, _remeasure_batch_norms

    def net(seed: int):
        keras.utils.set_random_seed(seed)
        return keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(momentum=0.9),
                                 keras.layers.Dense(2)])

    runs, model = [net(1), net(2), net(3)], net(4)
    for r in runs:  # runs differ in every variable, the statistics too
        r.layers[0].moving_mean.assign(np.random.default_rng(id(r) % 97).normal(size=3))
    _average_weights(model, runs)
    for got, *same in zip(model.weights, *[r.weights for r in runs], strict=True):
        np.testing.assert_allclose(got.numpy(), np.mean([v.numpy() for v in same], axis=0), rtol=1e-6)
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(40, 3)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros((40, 2), np.float32))).batch(8)
    _remeasure_batch_norms(model, ds, 5)
    bn = model.layers[0]
    batches = x.reshape(5, 8, 3)
    np.testing.assert_allclose(bn.moving_mean.numpy(), batches.mean(axis=1).mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), batches.var(axis=1).mean(axis=0), rtol=1e-4)
    assert bn.momentum == 0.9  # given back


def test_members_average_several_runs_each_with_its_own_seed(base_run, site, tmp_path):
    from edgekit.adapt import member_seed
    from edgekit.manifest import load_manifest

    out = tmp_path / "members"
    res = _cli("adapt", str(base_run), "--data", str(site), "-o", str(out), "--epochs", "2", "--lr", "0.05",
               "--members", "2", "--seed", "3", "--batch-size", "16", "--block", "1", "--allow-drop",
               *FLOAT_TOO, *LENIENT_GATE)
    assert res.exit_code == 0, res.output
    assert "the 2 runs' weights averaged: site val AUC" in res.output
    ad = load_manifest(out).training["adaptation"]
    assert [m["seed"] for m in ad["members"]] == [3, member_seed(3, 1)] == [3, 1003]
    assert all(len(m["history"]) == 2 for m in ad["members"]) and ad["config"]["members"] == 2
    assert not list(out.glob("run*.keras"))  # the runs' own models are not shipped
    res = _cli("adapt", str(base_run), "--data", str(site), "-o", str(tmp_path / "m0"), "--members", "0")
    assert res.exit_code != 0 and "Traceback" not in res.output
