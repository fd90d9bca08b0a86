"""Training throughput (images/s): edgekit's tf.data pipeline vs the seed notebooks' loader.

Not a test. Both loaders feed the same model (same seed, same augmentation ranges, batch size and
optimizer) on the same images, on this machine, in one run:

* ``tfdata``: images decoded once by ``edgekit.data.load_images`` (parallel, npz cache), then
  shuffle -> batch -> one affine warp per batch in ``dataset.map`` (AUTOTUNE) -> prefetch.
* ``generator``: ``keras.preprocessing.image.ImageDataGenerator(...).flow_from_directory`` (PIL
  decode + resize + scipy augmentation per image, every epoch), as in the PyImageSearch recipe.

Each loader runs ``--epochs`` short epochs of ``--steps`` steps in each of ``--rounds`` rounds
(order alternating); the first epoch of each fit (graph tracing) is left out, and the medians over
the remaining epochs are reported. Also timed: each loader alone (batches
pulled without training), and the one-off decode of the tf.data path, cold and from its cache.

    python benchmarks/train_throughput.py --data ../shared/data/malaria_cells --images 2000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from edgekit.paths import shared_data

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"


def _subset(data: Path, n: int, seed: int) -> tuple[list[str], list[int], list[str]]:
    import random

    from edgekit.data import scan_dataset

    ds = scan_dataset(data, group_mode="none")
    items = list(ds.items)
    random.Random(seed).shuffle(items)
    items = items[:n]  # a multiple of the batch size (see run), so every batch is full
    return [i.path for i in items], [i.label for i in items], ds.classes


def _png_tree(data: Path, paths: list[str], out: Path) -> None:
    """flow_from_directory wants class folders and does not list .webp: write the chosen files as
    lossless PNG (the NIH originals' format, as the seeds read them). Untimed, done once."""
    from PIL import Image

    for rel in paths:
        dst = (out / rel).with_suffix(".png")
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(data / rel) as im:
            im.convert("RGB").save(dst)


def _timed_fit(model, data, steps: int, epochs: int, batch: int) -> list[float]:
    """Images/s of each epoch from the batches actually run: a Keras PyDataset epoch can end early
    (at the end of the directory iterator) rather than after ``steps``."""
    import keras

    times: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0, self.batches = time.perf_counter(), 0

        def on_train_batch_end(self, batch_index, logs=None):
            self.batches += 1

        def on_epoch_end(self, epoch, logs=None):
            times.append(self.batches * batch / (time.perf_counter() - self.t0))

    model.fit(data, steps_per_epoch=steps, epochs=epochs, callbacks=[Clock()], verbose=0,
              shuffle=False)
    return times


def _loader_only(iterator, steps: int, batch: int) -> float:
    next(iterator)  # start-up
    t0 = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * batch / (time.perf_counter() - t0)


def run(args: argparse.Namespace) -> dict:
    import keras
    import numpy as np

    from edgekit.data import load_images
    from edgekit.manifest import Preprocessing
    from edgekit.model import build_resnet
    from edgekit.train import TrainConfig, compile_model, make_dataset

    cfg = TrainConfig(stages=args.stages, filters=args.filters, batch_size=args.batch_size,
                      input_size=args.input_size, seed=args.seed)
    n = args.images - args.images % args.batch_size
    paths, labels, classes = _subset(args.data, n, args.seed)
    pre = Preprocessing(input_size=(args.input_size, args.input_size))
    y = np.array(labels, np.int32)
    result: dict = {"images": len(paths), "classes": classes, "batch_size": cfg.batch_size,
                    "steps_per_epoch": args.steps, "epochs": args.epochs, "rounds": args.rounds,
                    "model": {"stages": list(cfg.stages), "filters": list(cfg.filters),
                              "input_size": args.input_size}}

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        t0 = time.perf_counter()
        x, bad = load_images(args.data, paths, pre, cache_dir=cache)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        load_images(args.data, paths, pre, cache_dir=cache)
        warm = time.perf_counter() - t0
        assert not bad, bad[:3]
        result["tfdata_decode_s"] = {"cold": round(cold, 2), "cached": round(warm, 3),
                                     "cold_img_per_s": round(len(paths) / cold, 1)}

        def tfdata():
            return make_dataset(x, y, cfg, training=True).repeat()

        def generator():
            try:
                from keras.preprocessing.image import ImageDataGenerator
            except ImportError:  # Keras 3.15 dropped the public alias; the class is still shipped
                from keras.src.legacy.preprocessing.image import ImageDataGenerator

            tree = Path(tmp) / "tree"
            if not tree.exists():
                _png_tree(args.data, paths, tree)
            gen = ImageDataGenerator(rotation_range=cfg.rotation, zoom_range=cfg.zoom,
                                     width_shift_range=cfg.shift, height_shift_range=cfg.shift,
                                     shear_range=cfg.shear, horizontal_flip=True, vertical_flip=True,
                                     fill_mode="nearest")
            return gen.flow_from_directory(str(tree), target_size=(args.input_size, args.input_size),
                                           class_mode="sparse", batch_size=cfg.batch_size, shuffle=True,
                                           seed=args.seed, interpolation="bilinear")

        loaders = {"tfdata": tfdata, "generator": generator}
        rates: dict[str, list[float]] = {k: [] for k in loaders}
        only: dict[str, list[float]] = {k: [] for k in loaders}
        for r in range(args.rounds):
            # alternate the order (A B, B A, ...) so a change in the shared machine's load hits both
            for name in list(loaders)[:: 1 if r % 2 == 0 else -1]:
                src = loaders[name]()
                it = iter(src) if name == "tfdata" else (next(src) for _ in iter(int, 1))
                only[name].append(_loader_only(it, args.loader_steps, cfg.batch_size))
                keras.utils.set_random_seed(args.seed)
                model = build_resnet((args.input_size, args.input_size, 3), len(classes), stages=cfg.stages,
                                     filters=cfg.filters, l2=cfg.l2)
                compile_model(model, cfg, args.steps * args.epochs)
                epochs = _timed_fit(model, loaders[name](), args.steps, args.epochs, cfg.batch_size)
                rates[name] += epochs[1:] or epochs  # the first epoch traces the graph: left out
                print(f"round {r + 1} {name:10s} train img/s per epoch {[round(e, 1) for e in epochs]}; "
                      f"loader alone {only[name][-1]:.1f} img/s", flush=True)
        for name in loaders:
            result[name] = {
                "train_img_per_s_median": round(statistics.median(rates[name]), 1),
                "train_img_per_s_epochs": [round(e, 1) for e in rates[name]],
                "loader_only_img_per_s": round(statistics.median(only[name]), 1),
            }
    t, g = result["tfdata"], result["generator"]
    result["ratio_train"] = round(t["train_img_per_s_median"] / g["train_img_per_s_median"], 2)
    result["ratio_loader_only"] = round(t["loader_only_img_per_s"] / g["loader_only_img_per_s"], 2)
    import cv2
    import tensorflow as tf

    result["machine"] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                         "load_avg_at_end": [round(v, 2) for v in os.getloadavg()], "note": args.note,
                         "gpus": len(tf.config.list_physical_devices("GPU"))}
    result["versions"] = {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__,
                          "opencv": cv2.__version__, "python": platform.python_version()}
    result["command"] = " ".join(sys.argv)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=shared_data("malaria_cells"))
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--steps", type=int, default=50, help="steps per timed epoch")
    p.add_argument("--epochs", type=int, default=4, help="timed epochs per loader (the first is warm-up)")
    p.add_argument("--loader-steps", type=int, default=50, help="batches pulled in the loader-only timing")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--stages", type=lambda s: tuple(int(v) for v in s.split(",")), default=(2, 2, 2))
    p.add_argument("--filters", type=lambda s: tuple(int(v) for v in s.split(",")), default=(16, 32, 64, 128))
    p.add_argument("--rounds", type=int, default=2, help="rounds, loader order alternating")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--note", default="", help="free text stored with the result, e.g. machine load")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"tf.data / generator: {result['ratio_train']}x training, "
          f"{result['ratio_loader_only']}x loader alone; wrote {args.out}")


if __name__ == "__main__":
    main()
