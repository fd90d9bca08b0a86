"""Training speed of the seed-sized recipe on a GPU machine: images/s and time per epoch for
mixed precision on/off and global batch 32/128/512 (learning rate scaled linearly), every local
GPU through edgekit's own strategy, model, optimizer and tf.data pipeline. Not run in CI.

    python benchmarks/gpu_train.py                         # NIH crops from $EDGEKIT_DATA
    python benchmarks/gpu_train.py --synthetic 20000       # no data needed
    python benchmarks/gpu_train.py --batches 128 --precision on --steps 50

Prints what the machine is (GPUs, TensorFlow, CUDA/cuDNN build) and one row per setting; writes
``benchmarks/results/gpu_train-<host>.json``. The first epoch of each setting (graph tracing and
autotuning) is timed separately from the steady epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    gpus = tf.config.list_physical_devices("GPU")
    names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "gpus": names, "tensorflow": tf.__version__,
            "cuda": build.get("cuda_version"), "cudnn": build.get("cudnn_version")}


def load_images(data: Path | None, synthetic: int, size: int):
    import numpy as np

    if synthetic:
        rng = np.random.default_rng(0)
        return (rng.integers(0, 256, (synthetic, size, size, 3), dtype=np.uint8),
                rng.integers(0, 2, synthetic).astype(np.int32))
    from edgekit.data import drop_unreadable, scan_dataset
    from edgekit.data import load_images as decode
    from edgekit.manifest import Preprocessing

    ds = drop_unreadable(scan_dataset(data, group_mode="none"))
    x, bad = decode(data, [i.path for i in ds.items], Preprocessing(input_size=(size, size)))
    skipped = {p for p, _ in bad}
    y = np.array([i.label for i in ds.items if i.path not in skipped], np.int32)
    return x, y


def run_setting(x, y, batch: int, precision: str, epochs: int, steps: int | None) -> dict:
    import keras

    from edgekit.distribute import make_distribution, scaled_lr, synchronize_batch_norm
    from edgekit.train import TrainConfig, build_model, compile_model, make_dataset, precision_policy

    cfg = TrainConfig(batch_size=batch, epochs=epochs, lr_scaling="linear", mixed_precision=precision)
    dist = make_distribution("auto")
    policy = precision_policy(precision, "GPU" in dist.name)
    keras.mixed_precision.set_global_policy(policy)
    try:
        with dist.strategy.scope():
            model = build_model(cfg, 2)
            if dist.replicas > 1:
                synchronize_batch_norm(model)
            n_steps = steps or -(-len(y) // batch)
            compile_model(model, cfg, n_steps * epochs)
        ds = make_dataset(x, y, cfg, training=True).repeat()
        times = []

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                times.append(time.perf_counter() - self.t0)

        model.fit(ds, epochs=epochs, steps_per_epoch=n_steps, verbose=0, callbacks=[Timer()])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    steady = statistics.median(times[1:]) if len(times) > 1 else times[0]
    return {"global_batch": batch, "precision_policy": policy, "strategy": dist.name,
            "replicas": dist.replicas, "lr_effective": scaled_lr(cfg.lr, batch, cfg.lr_scaling),
            "steps_per_epoch": n_steps,
            "first_epoch_s": round(times[0], 2), "epoch_s": round(steady, 2),
            "images_per_s": round(n_steps * batch / steady, 1)}


def main() -> None:
    from edgekit.paths import shared_data

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=shared_data() / "malaria_cells")
    ap.add_argument("--synthetic", type=int, default=0, help="Random images instead of --data.")
    ap.add_argument("--batches", default="32,128,512")
    ap.add_argument("--precision", default="off,on", help="Comma-separated: off,on,float16,bfloat16.")
    ap.add_argument("--epochs", type=int, default=3, help="Per setting; the first is timed apart.")
    ap.add_argument("--steps", type=int, default=None, help="Steps per epoch (default: the whole set).")
    args = ap.parse_args()
    info = machine()
    print(json.dumps(info))
    if not info["gpus"]:
        print("note: no GPU visible; these are CPU numbers")
    x, y = load_images(None if args.synthetic else args.data, args.synthetic, 64)
    rows = []
    for precision in args.precision.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            row = run_setting(x, y, batch, precision, args.epochs, args.steps)
            rows.append(row)
            print(f"batch {batch:4d}  {row['precision_policy']:15s} {row['images_per_s']:9.1f} img/s  "
                  f"{row['epoch_s']:7.2f} s/epoch  (first {row['first_epoch_s']:.1f} s)  "
                  f"lr {row['lr_effective']:g}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"gpu_train-{info['host']}.json"
    out.write_text(json.dumps({"machine": info, "images": int(len(y)), "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
