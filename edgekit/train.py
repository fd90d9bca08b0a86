# pyright: basic
"""``edgekit train``: decode once, a tf.data pipeline with augmentation, SGD + polynomial decay,
a checkpoint every epoch (``--resume``), the best epoch kept, and the run folder written.

Run folder layout (the start of a bundle)::

    RUN/model.keras            best epoch by the monitored validation metric
    RUN/manifest.json, labels.txt
    RUN/history.csv, curves.png
    RUN/eval_test.json, report_test.txt, roc_test.png   (edgekit.evaluate)
    RUN/split.json             only when trained from a data folder
    RUN/checkpoints/last.keras + state.json             resume point, rewritten every epoch

The monitor is the validation AUC of the positive class for two classes (threshold-free, robust to
class imbalance) and validation accuracy otherwise; ties keep the earlier epoch.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import DataError, EdgekitError
from edgekit.manifest import Preprocessing, atomic_write_text, default_positive_label
from edgekit.parts import Arrays, load_part, predict_arrays
from edgekit.paths import data_sha256, portable_command, portable_path
from edgekit.versions import tool_versions

STATE_NAME = "state.json"
LAST_NAME = "last.keras"
MIXED_PRECISION = ("auto", "on", "off", "float16", "bfloat16")
AUGMENTATION = ("augment", "rotation", "zoom", "shift", "shear", "flips", "stain", "od_jitter", "blur")


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in the manifest and the resume state."""

    backbone: str = "resnet"
    stages: tuple[int, ...] = (3, 4, 6)
    filters: tuple[int, ...] = (64, 128, 256, 512)
    stem_stride: int = 1  # 2: strided stem conv (the fast recipes)
    stem_pool: int = 1  # 2: a 2x2 max pool after the stem
    l2: float = 5e-4
    weights: str = "none"
    epochs: int = 50
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    power: float = 1.0  # polynomial decay power (1.0: linear to zero over the run)
    input_size: int = 64
    channels: int = 3
    resize: str = "area"
    augment: bool = True
    rotation: float = 20.0  # degrees
    zoom: float = 0.05
    shift: float = 0.05  # fraction of the side
    shear: float = 0.05  # shear factor (tan of the shear angle)
    flips: bool = True  # horizontal and vertical
    stain: float = 0.0  # colour jitter of the cell (not the black background): brightness +-stain,
    # each channel +-stain/2, as stain and illumination vary between labs; 0: off (the seed recipe)
    od_jitter: float = 0.0  # stain jitter in optical density: every channel's OD x exp(+-od_jitter),
    # one common and one per-channel factor, plus a lamp tint of +-od_jitter/4 per channel; 0: off
    blur: float = 0.0  # probability of re-sampling a crop at 40-100% of its resolution (cells of
    # another microscope/magnification are sharper or softer at 64x64), plus pixel noise; 0: off
    stain_norm: str = "none"  # preprocessing.stain: applied after augmentation, as on the device
    class_weight: str | None = None  # None | "balanced"
    positive_label: str | None = None
    seed: int = 42
    mixed_precision: str = "auto"  # auto: on when a GPU is present; on | off | float16 | bfloat16
    strategy: str = "auto"  # edgekit.distribute.STRATEGIES
    cpu_replicas: int = 1  # mirrored without GPUs: logical CPU devices (tests the multi-replica path)
    lr_scaling: str = "none"  # none | linear in the global batch (edgekit.distribute.scaled_lr)

    def __post_init__(self) -> None:
        self.stages = tuple(int(s) for s in self.stages)
        self.filters = tuple(int(f) for f in self.filters)
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.input_size < 8:
            raise EdgekitError("epochs, batch size, lr must be positive and the input size at least 8")
        from edgekit.manifest_schema import MAX_INPUT_SIDE

        if self.input_size > MAX_INPUT_SIDE:  # a bundle could not hold it (and training ran out of memory)
            raise EdgekitError(f"the input size must be at most {MAX_INPUT_SIDE}, not {self.input_size}")
        if self.l2 < 0:  # Keras refused it with a traceback once the model was built
            raise EdgekitError(f"--l2 must be 0 or more, not {self.l2}")
        if self.backbone == "resnet" and self.weights != "none":  # it was silently ignored
            raise EdgekitError("--weights is for the transfer backbones (mobilenetv3small, inceptionv3); "
                               "the resnet starts from random weights")
        if self.class_weight not in (None, "none", "balanced"):
            raise EdgekitError(f"unknown class weight {self.class_weight!r}: use balanced or none")
        if self.class_weight == "none":
            self.class_weight = None
        if self.mixed_precision not in MIXED_PRECISION:
            raise EdgekitError(f"unknown mixed precision {self.mixed_precision!r}: use one of "
                               f"{', '.join(MIXED_PRECISION)}")
        from edgekit.manifest import STAIN_METHODS

        if self.stain_norm not in STAIN_METHODS:
            raise EdgekitError(f"unknown stain normalization {self.stain_norm!r}; use one of {STAIN_METHODS}")
        if self.stain_norm != "none" and self.channels != 3:
            raise EdgekitError("stain normalization needs 3 colour channels")

    def model_dict(self) -> dict[str, Any]:
        if self.backbone == "resnet":
            d = {"arch": "resnet", "stages": list(self.stages), "filters": list(self.filters), "l2": self.l2}
            if (self.stem_stride, self.stem_pool) != (1, 1):
                d.update(stem_stride=self.stem_stride, stem_pool=self.stem_pool)
            return d
        return {"arch": self.backbone, "weights": self.weights}


# ---------------------------------------------------------------------------------------------
# data


def resolve_split(split_or_data: Path, run_dir: Path, data_root: Path | None = None,
                  seed: int = 42) -> tuple[Any, str, Path]:
    """A split file is loaded (and checked against the data); a data folder gets a default grouped
    split saved as ``RUN/split.json``. Returns (split, sha256, split file path)."""
    from edgekit.splits import load_split

    split_or_data = Path(split_or_data)
    if split_or_data.is_dir():
        from edgekit.data import drop_unreadable, scan_dataset
        from edgekit.splits import make_split, save_split

        ds = drop_unreadable(scan_dataset(split_or_data))
        split_path = run_dir / "split.json"
        save_split(make_split(ds, seed=seed), split_path)
        split, digest = load_split(split_path)
        return split, digest, split_path.resolve()
    if not split_or_data.exists():
        raise DataError(f"not found: {split_or_data} (give a split file or a data folder)")
    split, digest = load_split(split_or_data, data_root=data_root)
    return split, digest, split_or_data.resolve()


def balanced_class_weight(y: np.ndarray, num_classes: int) -> dict[int, float]:
    """n / (k * count_c): every class contributes equally to the loss."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    return {c: float(len(y) / (num_classes * counts[c])) if counts[c] else 0.0 for c in range(num_classes)}


# ---------------------------------------------------------------------------------------------
# tf.data pipeline


def augment_transforms(batch: Any, height: int, width: int, cfg: TrainConfig, seed_op: Any = None) -> Any:
    """Random affine maps (rotation, zoom, shift, shear, flips) as the 8-vectors that
    ``ImageProjectiveTransformV3`` takes, one per image: output pixel -> input pixel.

    All ranges are symmetric, so the inverse map is sampled directly. ``batch``: an int or a scalar
    Tensor (a dataset's last batch may be smaller).
    """
    import tensorflow as tf

    def u(lo: float, hi: float) -> Any:
        return tf.random.uniform([batch], lo, hi)

    theta = u(-1.0, 1.0) * (cfg.rotation * math.pi / 180.0)
    zx = u(1.0 - cfg.zoom, 1.0 + cfg.zoom)
    zy = u(1.0 - cfg.zoom, 1.0 + cfg.zoom)
    sh = u(-cfg.shear, cfg.shear)
    tx = u(-cfg.shift, cfg.shift) * width
    ty = u(-cfg.shift, cfg.shift) * height
    if cfg.flips:
        fx = tf.where(tf.random.uniform([batch]) < 0.5, -1.0, 1.0)
        fy = tf.where(tf.random.uniform([batch]) < 0.5, -1.0, 1.0)
    else:
        fx = fy = tf.ones([batch])
    return affine_vectors(theta, zx * fx, zy * fy, sh, tx, ty, height, width)


def stain_jitter(images: Any, strength: float) -> Any:
    """Scale each image's cell pixels by a random brightness and per-channel gain (stain and lamp
    colour vary between slides); black background pixels stay black, as in every crop."""
    import tensorflow as tf

    n: Any = tf.shape(images)[0]  # a scalar Tensor (tf's stubs allow ints only in shape lists)
    gain = tf.random.uniform([n, 1, 1, 1], 1.0 - strength, 1.0 + strength)
    channel = tf.random.uniform([n, 1, 1, 3], 1.0 - strength / 2, 1.0 + strength / 2)
    gain = gain * channel[..., : images.shape[-1]]  # tf stub: no Ellipsis # pyright: ignore[reportArgumentType]
    cell = tf.reduce_max(images, axis=-1, keepdims=True) > 0.0
    return tf.where(cell, tf.clip_by_value(images * gain, 0.0, 255.0), images)


def od_jitter(images: Any, strength: float) -> Any:
    """Stain jitter in optical density on the cell pixels: a stronger or weaker stain scales every
    channel's OD (one common and one per-channel factor, exp(+-strength)), a tinted lamp adds a
    constant per channel (+-strength/4). The black background stays black."""
    import tensorflow as tf

    n: Any  # a scalar Tensor (tf's stubs allow ints only in shape lists)
    n, c = tf.shape(images)[0], images.shape[-1]
    common = tf.exp(tf.random.uniform([n, 1, 1, 1], -strength, strength))
    per = tf.exp(tf.random.uniform([n, 1, 1, c], -strength / 2, strength / 2))
    tint = tf.random.uniform([n, 1, 1, c], -strength / 4, strength / 4)
    od = -tf.math.log((images + 1.0) / 256.0)
    out = tf.clip_by_value(256.0 * tf.exp(-(od * common * per + tint)) - 1.0, 0.0, 255.0)
    cell = tf.reduce_max(images, axis=-1, keepdims=True) > 0.0
    return tf.where(cell, out, images)


def resolution_jitter(images: Any, prob: float) -> Any:
    """With probability ``prob`` per crop, down-sample to 40-100% of the side (one factor per batch)
    and back, as a cell seen at another magnification; then Gaussian pixel noise (sigma 0-3) on the
    cell pixels of every crop."""
    import tensorflow as tf

    shape = tf.shape(images)
    n: Any  # a scalar Tensor (tf's stubs allow ints only in shape lists)
    n, hw = shape[0], shape[1:3]
    f = tf.random.uniform([], 0.4, 1.0)
    small = tf.image.resize(images, tf.cast(tf.cast(hw, tf.float32) * f, tf.int32), method="area",
                            antialias=True)
    soft = tf.clip_by_value(tf.image.resize(small, hw, method="bilinear"), 0.0, 255.0)
    pick = tf.random.uniform([n, 1, 1, 1]) < prob
    out = tf.where(pick, soft, images)
    sigma = tf.random.uniform([n, 1, 1, 1], 0.0, 3.0)
    noisy = tf.clip_by_value(out + tf.random.normal(tf.shape(out)) * sigma, 0.0, 255.0)
    cell = tf.reduce_max(images, axis=-1, keepdims=True) > 0.0
    return tf.where(cell, noisy, out)


def stain_normalize_batch(images: Any, method: str) -> Any:
    """The device's stain normalization (device/stain.py) on a float32 [0, 255] batch, through the
    same uint8 rounding the device applies."""
    import tensorflow as tf

    from edgekit.device.stain import normalize_stain

    u8 = tf.cast(tf.round(tf.clip_by_value(images, 0.0, 255.0)), tf.uint8)
    out = tf.numpy_function(lambda b: normalize_stain(b, method), [u8], tf.uint8, stateful=False)
    out = tf.ensure_shape(out, [None, None, None, images.shape[-1]])
    return tf.cast(out, tf.float32)


def affine_vectors(theta: Any, sx: Any, sy: Any, shear: Any, tx: Any, ty: Any, height: int,
                   width: int) -> Any:
    """M = R(theta) @ [[1, shear], [0, 1]] @ diag(sx, sy) about the image centre, then + (tx, ty)."""
    import tensorflow as tf

    c, s = tf.cos(theta), tf.sin(theta)
    m00, m01 = c * sx, (c * shear - s) * sy
    m10, m11 = s * sx, (s * shear + c) * sy
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    a2 = cx - m00 * cx - m01 * cy + tx
    b2 = cy - m10 * cx - m11 * cy + ty
    z = tf.zeros_like(theta)
    return tf.stack([m00, m01, a2, m10, m11, b2, z, z], axis=1)


def apply_transforms(images: Any, transforms: Any) -> Any:
    """Warp a float32 batch (N, h, w, C); edges repeat the nearest pixel, like ImageDataGenerator."""
    import tensorflow as tf

    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
        interpolation="BILINEAR", fill_mode="NEAREST", fill_value=0.0,
    )


def make_dataset(x: np.ndarray, y: np.ndarray, cfg: TrainConfig, training: bool,
                 sample_weight: np.ndarray | None = None) -> Any:
    """Arrays -> shuffled, batched, augmented (per batch, in parallel), prefetched float32 [0, 255]."""
    import tensorflow as tf

    h, w = x.shape[1:3]
    tensors = (x, y) if sample_weight is None else (x, y, sample_weight.astype(np.float32))
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if training:
        ds = ds.shuffle(len(x), seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.batch(cfg.batch_size, drop_remainder=False)

    @tf.autograph.experimental.do_not_convert  # plain Python branches on static flags only
    def prep(xb, *rest):
        xb = tf.cast(xb, tf.float32)
        if training and cfg.augment:
            xb = apply_transforms(xb, augment_transforms(tf.shape(xb)[0], h, w, cfg))
            xb = tf.clip_by_value(xb, 0.0, 255.0)
            if cfg.stain > 0:
                xb = stain_jitter(xb, cfg.stain)
            if cfg.od_jitter > 0:
                xb = od_jitter(xb, cfg.od_jitter)
            if cfg.blur > 0:
                xb = resolution_jitter(xb, cfg.blur)
        if training and cfg.stain_norm != "none":  # val/test arrays come normalized by prepare()
            xb = stain_normalize_batch(xb, cfg.stain_norm)
        return (xb, *rest)

    ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    return ds.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------------------------
# model, strategy, optimizer


def precision_policy(setting: str, on_gpu: bool) -> str:
    """The Keras dtype policy for ``--mixed-precision``: float16 on GPUs, bfloat16 on CPUs (where
    float16 has no fast kernels); the softmax output stays float32 either way (edgekit.model)."""
    if setting == "off" or (setting == "auto" and not on_gpu):
        return "float32"
    if setting in ("float16", "bfloat16"):
        return f"mixed_{setting}"
    return "mixed_float16" if on_gpu else "mixed_bfloat16"


def build_model(cfg: TrainConfig, num_classes: int) -> Any:
    from edgekit.model import build_resnet, build_transfer

    shape = (cfg.input_size, cfg.input_size, cfg.channels)
    if cfg.backbone == "resnet":
        return build_resnet(shape, num_classes, stages=cfg.stages, filters=cfg.filters, l2=cfg.l2,
                            stem_stride=cfg.stem_stride, stem_pool=cfg.stem_pool)
    return build_transfer(cfg.backbone, shape, num_classes, weights=cfg.weights)


def compile_model(model: Any, cfg: TrainConfig, total_steps: int) -> None:
    """SGD momentum 0.9 with polynomial decay from ``lr`` to 0 over all steps of the run."""
    import keras

    from edgekit.distribute import scaled_lr

    schedule = keras.optimizers.schedules.PolynomialDecay(
        scaled_lr(cfg.lr, cfg.batch_size, cfg.lr_scaling), decay_steps=max(1, total_steps),
        end_learning_rate=0.0, power=cfg.power
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=schedule, momentum=cfg.momentum),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def save_keras_atomic(model: Any, path: Path) -> None:
    """Keras wants a ``.keras`` suffix, so the temporary file keeps it; then one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# per-epoch work: validation metrics, checkpoint, best model, history, progress


def validation_scores(model: Any, val: Arrays, cfg: TrainConfig, positive: int | None) -> dict[str, float]:
    """One prediction pass on the validation part: loss (without L2), accuracy, and AUC when binary."""
    from edgekit.metrics import roc_auc

    if len(val.y) == 0:
        return {}
    p = predict_arrays(model, val.x, cfg.batch_size)
    eps = 1e-7
    out = {
        "val_loss": float(-np.mean(np.log(np.clip(p[np.arange(len(val.y)), val.y], eps, 1.0)))),
        "val_accuracy": float(np.mean(p.argmax(1) == val.y)),
    }
    if positive is not None:
        out["val_auc"] = float(roc_auc(val.y == positive, p[:, positive]))
    return out


def is_better(monitor: str, value: float | None, best: float | None) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value < best if monitor.endswith("loss") else value > best


def make_epoch_callback(run_dir: Path, cfg: TrainConfig, val: Arrays, positive: int | None, state: dict,
                        steps_per_epoch: int, n_train: int, log: Callable[[str], None]) -> Any:
    import keras

    ckpt_dir = run_dir / "checkpoints"

    class EpochEnd(keras.callbacks.Callback):
        """Validation, best model, checkpoint, state and history, and one progress line per epoch."""

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()
            self.batches = 0

        def on_train_batch_end(self, batch, logs=None):
            self.batches = batch + 1
            # a heartbeat in the first epoch, so a long run shows its speed early
            marks = {max(1, steps_per_epoch // 10), steps_per_epoch // 2}
            if state["epoch"] == 0 and steps_per_epoch >= 20 and self.batches in marks:
                rate = self.batches * cfg.batch_size / (time.perf_counter() - self.t0)
                log(f"  epoch 1: step {self.batches}/{steps_per_epoch}, {rate:.0f} img/s, "
                    f"about {steps_per_epoch * cfg.batch_size / rate / 60:.1f} min per epoch")

        def on_epoch_end(self, epoch, logs=None):
            train_s = time.perf_counter() - self.t0
            row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
            row.update(validation_scores(self.model, val, cfg, positive))
            row["lr"] = float(np.asarray(self.model.optimizer.learning_rate))
            row["seconds"] = round(time.perf_counter() - self.t0, 2)
            row["train_img_per_s"] = round(n_train / train_s, 1)
            monitor = state["monitor"]
            value = row.get(monitor)
            best_flag = ""
            if is_better(monitor, value, state["best"]):
                state.update(best=value, best_epoch=epoch + 1)
                save_keras_atomic(self.model, run_dir / "model.keras")
                best_flag = "  *best"
            save_keras_atomic(self.model, ckpt_dir / LAST_NAME)
            state["epoch"] = epoch + 1
            state["step"] = int(np.asarray(self.model.optimizer.iterations))
            state["history"].append(row)
            atomic_write_text(ckpt_dir / STATE_NAME, json.dumps(state, indent=1) + "\n")
            write_history_csv(state["history"], run_dir / "history.csv")
            shown = "  ".join(f"{k} {row[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy",
                                                             "val_auc") if k in row)
            log(f"epoch {epoch + 1}/{cfg.epochs}  {shown}  lr {row['lr']:.4f}  {row['seconds']:.0f} s  "
                f"{row['train_img_per_s']:.0f} img/s{best_flag}")

    return EpochEnd()


def write_history_csv(history: list[dict], path: Path) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# the command's work


def train_run(
    split_or_data: Path,
    run_dir: Path,
    cfg: TrainConfig,
    data_root: Path | None = None,
    resume: bool = False,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = print,
    workers: str | None = None,
    worker_index: int | None = None,
) -> Path:
    """Train (or resume) a run and write the complete run folder; returns ``RUN``.

    ``workers``/``worker_index`` join a multi-host cluster (edgekit.distribute); they are not part
    of the stored configuration because they differ from host to host."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    state_path = ckpt_dir / STATE_NAME
    if resume:
        if not state_path.is_file():
            raise EdgekitError(f"nothing to resume in {run_dir}: no checkpoints/{STATE_NAME}")
        state = json.loads(state_path.read_text())
        # the stored configuration wins: the lr schedule's length is fixed by it
        cfg = TrainConfig(**state["config"])
        log(f"resuming {run_dir} after epoch {state['epoch']} with its stored configuration")
    elif state_path.is_file():
        raise EdgekitError(f"{run_dir} already holds a training run; pass --resume to continue it "
                           "or choose another --out")
    else:
        state = None

    if state is not None and Path(split_or_data).is_dir() and (run_dir / "split.json").is_file():
        # resuming a run started from a data folder: reuse its split rather than make a new one
        split_or_data, data_root = run_dir / "split.json", Path(split_or_data)
    split, split_sha, split_file = resolve_split(split_or_data, run_dir, data_root, cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    if state is not None and state["split_sha256"] != split_sha:
        raise DataError("the split file does not match the interrupted run's (sha256 differs)")
    labels = list(split.classes)
    positive_label = cfg.positive_label or default_positive_label(labels)
    if positive_label not in labels:
        raise DataError(f"positive label {positive_label!r} is not one of the classes {labels}")
    cfg.positive_label = positive_label
    positive = labels.index(positive_label) if len(labels) == 2 else None
    pre = Preprocessing(input_size=(cfg.input_size, cfg.input_size), channels=cfg.channels,
                        color_order="GRAY" if cfg.channels == 1 else "RGB", resize=cfg.resize,
                        stain=cfg.stain_norm)

    # training crops are normalized after augmentation, in the tf.data pipeline, like the device does
    # after its resize; validation crops get the whole device preprocessing here
    train = load_part(split, "train", replace(pre, stain="none"), cache_dir, log)
    val = load_part(split, "val", pre, cache_dir, log)
    if len(train.y) == 0:
        raise DataError("the train part has no readable images")
    missing = [c for k, c in enumerate(labels) if not (train.y == k).any()]
    if missing:
        raise DataError(f"class(es) with no readable training images: {', '.join(missing)}")

    import keras

    from edgekit.distribute import make_distribution

    keras.utils.set_random_seed(cfg.seed + (state["epoch"] if state else 0))
    dist = make_distribution(cfg.strategy, cfg.cpu_replicas, workers, worker_index)
    policy = precision_policy(cfg.mixed_precision, "GPU" in dist.name)
    distribution = {**dist.record(cfg.batch_size, cfg.lr, cfg.lr_scaling), "precision_policy": policy}
    log(f"{dist.name}; {dist.replicas} replica(s); precision {policy}; {len(train.y)} train, "
        f"{len(val.y)} val images; global batch {cfg.batch_size}, lr {distribution['lr_effective']:g}")
    try:
        keras.mixed_precision.set_global_policy(policy)
        state = _fit(run_dir, cfg, state, dist, train, val, labels, positive, split_sha, log)
    finally:  # the policy is process-wide: later models in this process are float32 again
        keras.mixed_precision.set_global_policy("float32")
    if not dist.is_chief:
        log(f"worker {dist.worker_index} done; the chief's run folder (worker 0) is the result")
        return run_dir
    state["distribution"] = distribution
    finish_run(run_dir, split, split_sha, split_file, cfg, state, labels, positive_label, pre, val,
               train.skipped + val.skipped, cache_dir, log)
    return run_dir


def _fit(run_dir: Path, cfg: TrainConfig, state: dict | None, dist: Any, train: Arrays, val: Arrays,
         labels: list[str], positive: int | None, split_sha: str, log: Callable[[str], None]) -> dict:
    """Build or restore the model under the strategy and train the remaining epochs; returns state.

    Every worker of a multi-host run resumes from the chief's checkpoint (so they always agree on
    the epoch); workers other than the chief write theirs to ``RUN/checkpoints/worker-N/``."""
    import keras

    from edgekit.distribute import synchronize_batch_norm

    ckpt_dir = run_dir / "checkpoints"
    save_dir = run_dir if dist.is_chief else ckpt_dir / f"worker-{dist.worker_index}"
    steps_per_epoch = math.ceil(len(train.y) / cfg.batch_size)
    with dist.strategy.scope():
        if state is not None:
            model = keras.models.load_model(ckpt_dir / LAST_NAME)
            done = int(np.asarray(model.optimizer.iterations)) // steps_per_epoch
            if done != state["epoch"]:
                log(f"note: checkpoint holds {done} epoch(s), state says {state['epoch']}; "
                    "following the checkpoint")
                state["epoch"] = done
                state["history"] = state["history"][:done]
        else:
            model = build_model(cfg, len(labels))
            if dist.replicas > 1:
                synchronize_batch_norm(model)
            compile_model(model, cfg, steps_per_epoch * cfg.epochs)
    if state is None:
        monitor = ("val_auc" if positive is not None and len(val.y)
                   else "val_accuracy" if len(val.y) else "loss")
        state = {"epoch": 0, "step": 0, "best": None, "best_epoch": None, "monitor": monitor,
                 "split_sha256": split_sha, "config": _jsonable(asdict(cfg)), "history": []}
        log(f"model {cfg.model_dict()}: {model.count_params():,} parameters; best epoch by {monitor}")

    weights = None
    if cfg.class_weight == "balanced":
        cw = balanced_class_weight(train.y, len(labels))
        weights = np.array([cw[int(k)] for k in train.y], np.float32)
        log(f"class weights {cw}")
    ds = make_dataset(train.x, train.y, cfg, training=True, sample_weight=weights)
    if state["epoch"] < cfg.epochs:
        callback = make_epoch_callback(save_dir, cfg, val, positive, state, steps_per_epoch, len(train.y),
                                       log)
        if dist.workers > 1:
            from edgekit.distribute import patch_for_multiworker

            patch_for_multiworker(model)
        with dist.strategy.scope():
            model.fit(ds, epochs=cfg.epochs, initial_epoch=state["epoch"], callbacks=[callback], verbose=0,
                      shuffle=False)
    return state


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=list))


def finish_run(run_dir: Path, split: Any, split_sha: str, split_file: Path, cfg: TrainConfig, state: dict,
               labels: list[str], positive_label: str, pre: Preprocessing, val: Arrays,
               skipped: list[tuple[str, str]], cache_dir: Path | None, log: Callable[[str], None]) -> None:
    """Best model -> manifest (thresholds from validation), curves, and the test evaluation."""
    import keras

    from edgekit.device.sizes import fit_sizes, measure_files
    from edgekit.evaluate import evaluate_run, plot_curves
    from edgekit.manifest import Artifact, Manifest, TensorSpec, sha256_file
    from edgekit.thresholds import choose_thresholds, fit_patient_rule

    model_path = run_dir / "model.keras"
    if not model_path.is_file():  # no validation metric ever improved (e.g. NaN); keep the last epoch
        os.replace(run_dir / "checkpoints" / LAST_NAME, model_path)
    model = keras.models.load_model(model_path, compile=False)
    manifest = Manifest(labels=labels, preprocessing=pre, positive_label=positive_label, name=run_dir.name)
    if len(labels) == 2 and len(val.y) and len(set(val.y.tolist())) == 2:
        p_val = predict_arrays(model, val.x, cfg.batch_size)[:, labels.index(positive_label)]
        y_val = val.y == labels.index(positive_label)
        manifest.thresholds = choose_thresholds(y_val, p_val)
        manifest.patient_rule = fit_patient_rule(y_val, p_val, val.groups, manifest.decision)
    h, w = pre.input_size
    manifest.artifacts["keras"] = Artifact(
        format="keras", path="model.keras", sha256=sha256_file(model_path), bytes=model_path.stat().st_size,
        runtime="keras", inputs=[TensorSpec("image", [-1, h, w, pre.channels], "float32")],
        outputs=[TensorSpec("probabilities", [-1, len(labels)], "float32")],
    )
    data_paths = [i.path for items in split.parts.values() for i in items]
    manifest.training = {
        "split_file": portable_path(split_file, run_dir, travels=False),
        "split_sha256": split_sha,
        "split": {"group_mode": split.group_mode, "seed": split.seed, "test_fraction": split.test_fraction,
                  "val_fraction": split.val_fraction},
        "data_root": portable_path(split.data_root, run_dir, travels=False),
        "data_sha256": data_sha256(split.data_root, data_paths),
        "group_mode": split.group_mode,
        "model": cfg.model_dict(),
        "parameters": int(model.count_params()),
        "epochs": cfg.epochs,
        "epochs_done": state["epoch"],
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "optimizer": f"SGD momentum {cfg.momentum}, polynomial decay power {cfg.power} to 0",
        "best_epoch": state["best_epoch"],
        "monitor": state["monitor"],
        "best_value": state["best"],
        "augmentation": {k: getattr(cfg, k) for k in AUGMENTATION},
        "class_weight": cfg.class_weight,
        "seed": cfg.seed,
        "distribution": state.get("distribution"),
        "skipped_images": len(split.skipped) + len(skipped),
        "config": _jsonable(asdict(cfg)),
        "command": portable_command(sys.argv, run_dir),
    }
    manifest.versions = tool_versions(("edgekit", "tensorflow", "keras", "numpy", "opencv"), with_python=True)
    manifest.image_sizes = fit_sizes(measure_files([Path(split.data_root) / i.path
                                                    for i in split.parts.get("train", [])]), "the train part")
    manifest.save(run_dir)
    plot_curves(state["history"], run_dir / "curves.png")
    if split.parts.get("test"):
        evaluate_run(run_dir, "test", cache_dir=cache_dir, log=log, model=model)
    log(f"run folder complete: {run_dir}")
