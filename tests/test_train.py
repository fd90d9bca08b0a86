"""edgekit train / evaluate end to end with tiny models on small generated folders."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("tensorflow")

from edgekit.cli import main  # noqa: E402
from edgekit.errors import DataError, EdgekitError  # noqa: E402
from edgekit.manifest import load_manifest, sha256_file  # noqa: E402
from edgekit.train import (  # noqa: E402
    TrainConfig,
    affine_vectors,
    apply_transforms,
    augment_transforms,
    make_dataset,
    train_run,
)

# (4, 8, 8, 8) crashes TF 2.21's oneDNN CPU kernels (heap corruption); 8 is the smallest safe width.
TINY = {"stages": (1, 1, 1), "filters": (8, 16, 16, 16), "input_size": 32, "batch_size": 8}


def _image(h=6, w=8):
    return np.arange(h * w * 2, dtype=np.float32).reshape(1, h, w, 2)


def test_identity_and_flip_transforms():
    import tensorflow as tf

    x = _image()
    zero, one = tf.zeros([1]), tf.ones([1])
    same = apply_transforms(x, affine_vectors(zero, one, one, zero, zero, zero, 6, 8)).numpy()
    np.testing.assert_allclose(same, x, atol=1e-4)
    flipped = apply_transforms(x, affine_vectors(zero, -one, one, zero, zero, zero, 6, 8)).numpy()
    np.testing.assert_allclose(flipped, x[:, :, ::-1], atol=1e-4)
    shifted = apply_transforms(x, affine_vectors(zero, one, one, zero, one, zero, 6, 8)).numpy()
    np.testing.assert_allclose(shifted[:, :, :-1], x[:, :, 1:], atol=1e-4)  # output(x) = input(x + 1)


def test_random_transforms_stay_in_range():
    cfg = TrainConfig()
    t = augment_transforms(256, 64, 64, cfg).numpy()
    assert t.shape == (256, 8)
    scale = np.hypot(t[:, 0], t[:, 3])  # |first column| = zoom of x (rotation preserves it)
    assert scale.min() >= 0.95 - 1e-5 and scale.max() <= 1.05 + 1e-5
    assert (t[:, 0] < 0).any() and (t[:, 0] > 0).any()  # flips happen both ways
    assert np.all(t[:, 6:] == 0)


def test_dataset_batches_are_float_pixels():
    x = np.full((10, 16, 16, 3), 200, np.uint8)
    y = np.arange(10) % 2
    ds = make_dataset(x, y, TrainConfig(batch_size=4), training=True)
    batches = list(ds.as_numpy_iterator())
    # training batches are augmented in parallel and may come out of order (deterministic=False)
    assert sorted(len(b[0]) for b in batches) == [2, 4, 4]
    assert batches[0][0].dtype == np.float32
    np.testing.assert_allclose(batches[0][0], 200.0, atol=1e-3)  # a flat image stays flat under warping
    assert sorted(np.concatenate([b[1] for b in batches]).tolist()) == sorted(y.tolist())


def test_stain_jitter_keeps_the_background_black():
    import tensorflow as tf

    from edgekit.train import stain_jitter

    tf.random.set_seed(0)
    x = np.zeros((64, 8, 8, 3), np.float32)
    x[:, 2:6, 2:6] = (150.0, 100.0, 120.0)
    out = stain_jitter(tf.constant(x), 0.2).numpy()
    assert (out[:, :2] == 0).all() and (out[:, :, 6:] == 0).all()  # background untouched
    cell = out[:, 3, 3]
    ratio = cell / np.array([150.0, 100.0, 120.0])
    assert ratio.min() >= 0.8 * 0.9 - 1e-5 and ratio.max() <= 1.2 * 1.1 + 1e-5
    assert ratio.std(axis=0).min() > 0.03  # it does vary, per image and per channel
    assert not np.allclose(ratio[:, 0], ratio[:, 1])
    assert TrainConfig().stain == 0.0  # off in the seed recipe


def test_default_configuration_is_the_seed_recipe():
    from edgekit.train import build_model

    cfg = TrainConfig()
    assert (cfg.batch_size, cfg.lr, cfg.momentum, cfg.input_size) == (32, 0.1, 0.9, 64)
    assert (cfg.rotation, cfg.zoom, cfg.shift, cfg.shear, cfg.flips) == (20.0, 0.05, 0.05, 0.05, True)
    assert build_model(cfg, 2).count_params() == 2_163_918


class _Stop(Exception):
    pass


def test_train_interrupt_resume_and_run_folder(cell_folder, tmp_path, monkeypatch):
    import edgekit.train as train_mod

    run = tmp_path / "run"
    cfg = TrainConfig(epochs=2, **TINY)
    real = train_mod.make_epoch_callback

    def interrupting(*args, **kwargs):
        cb = real(*args, **kwargs)
        original = cb.on_epoch_end

        def end(epoch, logs=None):
            original(epoch, logs)
            raise _Stop  # killed right after the first checkpoint

        cb.on_epoch_end = end
        return cb

    monkeypatch.setattr(train_mod, "make_epoch_callback", interrupting)
    with pytest.raises(_Stop):
        train_run(cell_folder, run, cfg, cache_dir=tmp_path / "cache", log=lambda s: None)
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    n_train = len(json.loads((run / "split.json").read_text())["parts"]["train"])
    assert state["epoch"] == 1 and state["step"] == -(-n_train // 8)  # one epoch of batches of 8
    monkeypatch.setattr(train_mod, "make_epoch_callback", real)
    with pytest.raises(EdgekitError, match="--resume"):
        train_run(cell_folder, run, cfg, cache_dir=tmp_path / "cache", log=lambda s: None)

    split_sha = sha256_file(run / "split.json")
    train_run(cell_folder, run, TrainConfig(), resume=True, cache_dir=tmp_path / "cache", log=lambda s: None)
    assert sha256_file(run / "split.json") == split_sha  # the data folder's run reuses its own split
    for name in ("model.keras", "manifest.json", "labels.txt", "history.csv", "curves.png",
                 "roc_test.png", "eval_test.json", "report_test.txt", "checkpoints/last.keras"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[0]["lr"]) == pytest.approx(0.05, rel=1e-4)  # half-way down the linear decay
    assert float(rows[1]["lr"]) == pytest.approx(0.0, abs=1e-6)  # schedule position survived the resume
    m = load_manifest(run)
    assert m.labels == ["Parasitized", "Uninfected"] and m.positive_label == "Parasitized"
    assert m.preprocessing.input_size == (32, 32)
    assert m.artifacts["keras"].sha256 == sha256_file(run / "model.keras")
    tr = m.training
    assert tr["model"] == {"arch": "resnet", "stages": [1, 1, 1], "filters": [8, 16, 16, 16], "l2": 5e-4}
    assert tr["split_sha256"] == sha256_file(run / "split.json")
    assert tr["monitor"] == "val_auc" and tr["best_epoch"] in (1, 2)
    assert set(m.versions) >= {"edgekit", "tensorflow", "keras", "numpy", "opencv"}
    ev = m.evaluation["test"]
    n_test = len(json.loads((run / "split.json").read_text())["parts"]["test"])
    assert ev["n"] == n_test and 0.0 <= ev["auc"]["value"] <= 1.0
    assert sum(ev["confusion"].values()) == n_test

    # evaluate reproduces the stored evaluation; info reads the run
    first = json.loads((run / "eval_test.json").read_text())
    res = CliRunner().invoke(main, ["evaluate", str(run), "--split", "test",
                                    "--cache-dir", str(tmp_path / "c2")])
    assert res.exit_code == 0, res.output
    again = json.loads((run / "eval_test.json").read_text())
    assert again["confusion"] == first["confusion"]
    assert again["auc"]["value"] == pytest.approx(first["auc"]["value"])
    res = CliRunner().invoke(main, ["info", str(run)])
    assert res.exit_code == 0 and "best epoch" in res.output


def _odd_folder(root: Path) -> Path:
    """Three classes of mixed sizes and formats: gray, RGBA, 16-bit, plus one corrupt file."""
    import cv2

    rng = np.random.default_rng(1)
    for c, cls in enumerate(("a", "b", "c")):
        for k in range(8):
            h, w = int(rng.integers(20, 50)), int(rng.integers(20, 50))
            base = np.full((h, w), 60 + 70 * c, np.uint8)
            kind = k % 3
            img = base if kind == 0 else np.dstack([base] * 3 + [np.full_like(base, 255)]) if kind == 1 \
                else (np.dstack([base] * 3).astype(np.uint16) * 257)
            (root / cls).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / cls / f"{cls}{k}.png"), img)
    (root / "a" / "broken.png").write_bytes(b"garbage")
    return root


def test_cli_odd_images_three_classes(tmp_path):
    data = _odd_folder(tmp_path / "odd")
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", str(data), "--out", str(run), "--stages", "1,1", "--filters",
                                    "8,16,16", "--epochs", "1", "--batch-size", "8", "--input-size", "24",
                                    "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    m = load_manifest(run)
    assert m.labels == ["a", "b", "c"] and m.positive_label == "c"
    assert m.training["monitor"] == "val_accuracy" and m.training["skipped_images"] == 1
    # the sizes of the train part's images (the size check's record; the unreadable file left out)
    assert m.image_sizes is not None and 0 < m.image_sizes.min_side <= m.image_sizes.max_side
    assert 0 < m.image_sizes.n <= len(json.loads((run / "split.json").read_text())["parts"]["train"])
    ev = json.loads((run / "eval_test.json").read_text())
    assert "auc" not in ev and set(ev["per_class"]) == {"a", "b", "c"}
    assert not (run / "roc_test.png").exists()


def test_cli_bad_inputs_give_one_error_line(cell_folder, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "error: not found" in res.output and "Traceback" not in res.output
    one = tmp_path / "one" / "A"
    one.mkdir(parents=True)
    shutil.copy(next((cell_folder / "Uninfected").iterdir()), one / "x.png")
    res = runner.invoke(main, ["train", str(tmp_path / "one"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "only one class" in res.output
    res = runner.invoke(main, ["train", str(cell_folder), "--out", str(tmp_path / "r2"), "--resume"])
    assert res.exit_code == 2 and "nothing to resume" in res.output
    with pytest.raises(DataError, match="positive label"):
        train_run(cell_folder, tmp_path / "r3", TrainConfig(positive_label="Nope", **TINY),
                  log=lambda s: None)


@pytest.mark.slow
@pytest.mark.realdata
def test_real_malaria_one_epoch_end_to_end(shared_malaria, tmp_path):
    from edgekit.data import drop_unreadable, scan_dataset
    from edgekit.splits import make_split, save_split

    sp = make_split(drop_unreadable(scan_dataset(shared_malaria)), seed=42)
    save_split(sp, tmp_path / "split.json")
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", str(tmp_path / "split.json"), "--out", str(run),
                                    "--stages", "1,1,1", "--filters", "8,16,16,16", "--epochs", "1",
                                    "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    m = load_manifest(run)
    assert m.training["group_mode"] == "nih"
    assert m.evaluation["test"]["n"] == len(sp.parts["test"])
    assert m.evaluation["test"]["auc"]["value"] > 0.7  # even one epoch of a tiny model learns something


@pytest.mark.slow
@pytest.mark.realdata
def test_real_xray_without_patient_groups(tmp_path):
    from conftest import XRAY

    if not (XRAY / "TRAIN").is_dir():
        pytest.skip("x-ray data not present")
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", str(XRAY / "TRAIN"), "--out", str(run), "--stages", "1,1,1",
                                    "--filters", "8,16,16,16", "--epochs", "1", "--cache-dir",
                                    str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    m = load_manifest(run)
    assert m.training["group_mode"] == "none"
    assert m.positive_label == "openI_abd_xray"
    assert (run / "roc_test.png").is_file()
