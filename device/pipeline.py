# pyright: basic
"""Images through the device: decode, quality gates, classify (a batch per inference call). Plus
input expansion, content hashes, worker threads and the batch tally shared by ``classify``,
``screen`` and ``camera`` (their terminal output lives in :mod:`edgekit.device.output`)."""

from __future__ import annotations

import glob
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from edgekit.device.backends import predict_in_batches
from edgekit.device.preprocess import is_image_file, prepare, read_image
from edgekit.device.quality import QualityGates, check_quality
from edgekit.device.sizes import outside
from edgekit.digest import sha256
from edgekit.errors import FileChanged, ImageError
from edgekit.safefile import NotRegularFile, is_regular, open_regular

if TYPE_CHECKING:
    from edgekit.device.runtime import Classifier, Prediction
    from edgekit.manifest import Domain, ImageSizes

T = TypeVar("T")
R = TypeVar("R")

STATUSES = ("classified", "rejected", "failed")
# A cell crop is ~100x100 px; 16 MP bounds what one crop can cost (decode, quality gates) to ~0.4 GB,
# where the 50 MP field limit let a 3 MB PNG take 1.2 GB on the crop path.
MAX_CROP_PIXELS = 16_000_000
# images per committed transaction and per lookahead: a batch's decoded crops are held until it is
# committed, and each commit waits for the disk (synchronous=FULL)
BATCH_SIZE = 32
# images per inference call: the model's activations are sized for it (32: ~4 MB more peak RSS on
# 1,000 NIH crops than 16, no faster on 1 or 2 threads; speed round 10)
MODEL_BATCH = 16


@dataclass
class Outcome:
    """What happened to one image: ``classified`` (with a prediction), ``rejected`` by a quality
    gate, or ``failed`` (unreadable); ``reason`` says why for the last two."""

    source_id: str
    status: str
    reason: str | None = None
    prediction: Prediction | None = None
    content_hash: str | None = None
    seconds: float = 0.0
    domain_score: float | None = None  # distance from the bundle's training cells (edgekit.device.domain)
    # the decoded RGB crop the model was given, kept until its batch is recorded (crops for review)
    pixels: np.ndarray | None = field(default=None, repr=False, compare=False)


def workers(threads: int | None) -> int:
    """Worker threads for per-image work: ``threads`` when given, else the usable cores (max 4)."""
    if threads:
        return threads
    try:
        return max(1, min(4, len(os.sched_getaffinity(0))))
    except AttributeError:  # not Linux
        return max(1, min(4, os.cpu_count() or 1))


M_ARENA_MAX = -8  # glibc's mallopt parameter


def one_heap() -> bool:
    """Have every thread of this process allocate from one malloc heap (glibc: ``M_ARENA_MAX`` 1),
    before the worker threads start: each thread's own heap keeps what it freed for that thread
    alone, so a field segmented in one thread and its cells classified in another held both
    high-water marks (8 IML fields: ~6 MB of peak RSS, 1,000 crops: ~5 MB; no CPU cost measured).
    Left alone where the user set ``MALLOC_ARENA_MAX`` or the C library has no such setting;
    whether it was set."""
    import sys

    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1))
    except (OSError, AttributeError):
        return False


def prefetch(fn: Callable[[T], R], items: Iterable[T], n_workers: int, ahead: int | None = None
             ) -> Iterator[R]:
    """``map(fn, items)`` in input order, with up to ``n_workers`` items computed ahead in threads
    (OpenCV and the inference engines release the GIL, so decoding and segmenting the next images
    overlaps with whatever the caller does with the current one). Exceptions reach the caller.
    ``ahead``: how many items may be computed ahead (default ``n_workers``, none for one worker);
    ``n_workers=1, ahead=1`` is one background thread, one item ahead of the caller. The first
    ``ahead`` items start at once, not at the first ``next``: the caller can load its model meanwhile."""
    if ahead is None:
        ahead = n_workers if n_workers > 1 else 0
    if n_workers < 1 or ahead < 1:
        return map(fn, items)
    from edgekit.device.threads import Pool

    pool = Pool(n_workers, "edgekit-prefetch")
    it = iter(items)
    pending = deque(pool.submit(fn, item) for item in islice(it, ahead))
    return _in_order(pool, pending, it, fn)


def _in_order(pool: Any, pending: deque, items: Iterator[T], fn: Callable[[T], R]) -> Iterator[R]:
    """:func:`prefetch`'s results: one more item submitted for each one handed over."""
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown()  # what has not started is dropped; what runs is waited for


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> Iterator[tuple[str, Path | None]]:
    """Files, folders (recursive, image files only) and glob patterns -> (shown path, Path).

    An input that matches nothing yields ``(input, None)`` so the caller reports it and goes on.
    """
    seen: set[Path] = set()
    for raw in inputs:
        text = str(raw)
        p = Path(text)
        if not text.strip():  # Path("") is the current folder: an unset shell variable read it all
            yield text, None
            continue
        try:
            is_dir, exists = p.is_dir(), p.exists()
        except OSError:  # a folder on its path cannot be searched: missing_reason says so
            yield text, None
            continue
        unreadable: list[str] = []
        if is_dir:
            matches = _folder_images(p, unreadable)
        elif exists:
            matches = [p] if is_regular(p) else []  # a FIFO or device is reported, never opened
        elif glob.has_magic(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if not Path(m).is_dir())
        else:
            matches = []
        if not matches and not unreadable and _first(seen, Path(os.path.abspath(text))):
            yield text, None
        for folder in unreadable:  # reported, never skipped in silence
            yield folder, None
        for m in matches:  # each file once, however often it is named (reported ones too)
            regular = is_regular(m)  # not: a broken link, a FIFO, a socket: reported, never opened
            if _first(seen, m.resolve() if regular else Path(os.path.abspath(m))):
                yield str(m), m if regular else None


def _first(seen: set[Path], key: Path) -> bool:
    """Whether ``key`` is new to ``seen`` (then added)."""
    new = key not in seen
    seen.add(key)
    return new


def _folder_images(folder: Path, unreadable: list[str]) -> list[Path]:
    """The entries named as images under ``folder`` (recursive, symlinked folders not followed), sorted,
    regular files or not (the caller reports the others); the folders that could not be listed are
    appended to ``unreadable``."""
    found = []
    for root, _dirs, names in os.walk(folder, onerror=lambda exc: unreadable.append(str(exc.filename))):
        found += [f for f in (Path(root, n) for n in names) if is_image_file(f)]
    return sorted(found)


def missing_reason(text: str) -> str:
    """Why an input from :func:`expand_inputs` yielded no file."""
    if not text.strip():
        return "an empty path (an unset variable?): nothing was read"
    p = Path(text)
    try:
        is_dir = p.is_dir()
    except OSError as exc:
        return f"cannot reach it: {exc.strerror}"
    if is_dir:
        try:
            with os.scandir(p):
                pass
        except OSError as exc:
            return f"cannot read this folder: {exc.strerror}"
        return "no image files in this folder"
    if p.exists():
        return _unreadable(p) if p.is_file() else "not a regular file"
    if p.is_symlink():
        return "a broken symbolic link (its target is missing, or links back to itself)"
    if glob.has_magic(text):
        return "no file matches this pattern"
    return "file not found"


def _unreadable(path: Path) -> str:
    """Why a regular file could not be read: an I/O error (a failing card, a dropped mount), no
    permission."""
    try:
        with open(path, "rb", buffering=0) as f:
            f.read(1)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    return "cannot read it"


def image_files(inputs: Sequence[str | os.PathLike], what: str = "image") -> list[Path]:
    """:func:`expand_inputs` for commands that need every input: a DataError names the first one
    that yields no file."""
    from edgekit.errors import DataError

    files: list[Path] = []
    for shown, path in expand_inputs(inputs):
        if path is None:
            raise DataError(f"{what} {shown}: {missing_reason(shown)}")
        files.append(path)
    return files


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a regular file's bytes: the content hash screening records deduplicate on (OSError
    for anything else, raised before reading, so a FIFO cannot block)."""
    h = sha256()
    try:
        f = open_regular(path, "image")
    except NotRegularFile as exc:
        raise OSError(str(exc)) from exc
    with f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def array_hash(arr: np.ndarray) -> str:
    """sha256 of an in-memory crop (shape, dtype and pixels)."""
    arr = np.ascontiguousarray(arr)
    h = sha256(f"{arr.shape}{arr.dtype}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def as_rgb(arr: np.ndarray) -> np.ndarray:
    """An in-memory crop as RGB uint8 (H, W, 3); gray crops are repeated, alpha dropped."""
    if arr.dtype != np.uint8:
        raise ImageError(f"crop must be uint8, not {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageError(f"crop has shape {arr.shape}; expected (H, W, 1|3|4)")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


def classify_one(
    source_id: str,
    image: np.ndarray | str | os.PathLike,
    classifier: Classifier,
    gates: QualityGates | None,
    content_hash: str | None = None,
) -> Outcome:
    """Decode (if a path), gate and classify one image. Never raises for a bad image."""
    return classify_batch([(source_id, image, content_hash)], classifier, gates)[0]


def classify_items(
    items: Sequence[tuple[str, Path | None]],
    classifier: Classifier,
    gates: QualityGates | None,
    n_workers: int = 1,
) -> Iterator[Outcome]:
    """The outcome of each (shown name, path or None: not found) of :func:`expand_inputs`, in order:
    the first image alone, so its result shows at once; then :data:`BATCH_SIZE` at a time (inference
    calls of :data:`MODEL_BATCH`)."""
    starts = [0, *range(1, len(items), BATCH_SIZE)] if items else []
    for a, b in zip(starts, [*starts[1:], len(items)], strict=True):
        chunk = items[a:b]
        todo = [(s, p, None) for s, p in chunk if p is not None]
        found = iter(classify_batch(todo, classifier, gates, n_workers))
        for shown, path in chunk:
            yield Outcome(shown, "failed", reason=missing_reason(shown)) if path is None else next(found)


def classify_batch(
    items: Sequence[tuple[str, np.ndarray | str | os.PathLike, str | None]],
    classifier: Classifier,
    gates: QualityGates | None,
    n_workers: int = 1,
) -> list[Outcome]:
    """Decode, gate and classify ``(source_id, image or path, content hash)`` items with one
    inference call for all that pass the gates; outcomes in input order. Never raises for a bad
    image. Decoding and gating run in ``n_workers`` threads. Each outcome's ``seconds`` is its own
    decode and gate time plus its share of preparing the inputs and of the call."""
    return predict_loaded(load_batch(items, classifier, gates, n_workers), classifier)


def load_batch(
    items: Sequence[tuple[str, np.ndarray | str | os.PathLike, str | None]],
    classifier: Classifier,
    gates: QualityGates | None,
    n_workers: int = 1,
    features: Mapping[str, np.ndarray | None] | None = None,
    cut: bool = False,
) -> list[tuple[Outcome, np.ndarray | None]]:
    """:func:`classify_batch`'s first half: each item decoded and gated (in ``n_workers`` threads):
    (outcome so far, decoded RGB crop or None when refused), in input order. ``features``: the
    domain features of crops already measured, by source id (not measured again); ``cut``: the
    items are cells the finder cut from fields (said so in a refusal's reason)."""
    domain = getattr(classifier.manifest, "domain", None)  # the domain guard's training-cell statistics
    sizes = getattr(classifier.manifest, "image_sizes", None)  # the training images' sizes
    n_workers = min(n_workers, len(items))
    return list(prefetch(lambda item: _load_one(item, gates, domain, sizes, features, cut), items, n_workers))


def predict_loaded(
    loaded: Sequence[tuple[Outcome, np.ndarray | None]], classifier: Classifier
) -> list[Outcome]:
    """:func:`classify_batch`'s second half: every crop that passed prepared for the model (here, in
    the caller's thread: with ``record_crops``'s lookahead the other thread decodes and gates the
    next batch meanwhile, ~0.2 ms a crop less on the longer of the two), the model on them, the
    outcomes."""
    ready = [(out, rgb) for out, rgb in loaded if rgb is not None]
    if ready:
        pre = classifier.manifest.preprocessing
        t0 = time.perf_counter()
        # at most MODEL_BATCH crops per call: a whole field's ~130 cells in one call sized the model's
        # activations (and the stacked input) for all of them, ~40 MB of peak RSS for no speed
        probs = predict_in_batches(classifier.predict, [rgb for _, rgb in ready], MODEL_BATCH,
                                   lambda chunk: np.stack([prepare(rgb, pre) for rgb in chunk]))
        share = (time.perf_counter() - t0) / len(ready)
        for (out, _), row in zip(ready, probs, strict=True):
            out.prediction = classifier.interpret(row)
            out.status = "classified"
            out.seconds += share
    return [out for out, _ in loaded]


def _load_one(
    item: tuple[str, np.ndarray | str | os.PathLike, str | None],
    gates: QualityGates | None,
    domain: Domain | None = None,
    sizes: ImageSizes | None = None,
    features: Mapping[str, np.ndarray | None] | None = None,
    cut: bool = False,
) -> tuple[Outcome, np.ndarray | None]:
    """One item decoded and gated (with gates: the quality gates, then the size check of
    :mod:`edgekit.device.sizes`): (outcome so far, its RGB crop or None when refused)."""
    source_id, image, content_hash = item
    t0 = time.perf_counter()
    out = Outcome(source_id, "failed", content_hash=content_hash)
    try:
        # a file: the bytes hashed for its record, or refused (replaced since: recorded under the
        # old hash, a rerun would classify the new picture a second time)
        rgb = as_rgb(image) if isinstance(image, np.ndarray) else \
            read_image(image, MAX_CROP_PIXELS, content_hash)
        feats = None
        if domain is not None:  # kept for rejected crops too: the session verdict counts every cell
            from edgekit.device.domain import crop_features, distances

            known = features is not None and source_id in features
            feats = features[source_id] if features is not None and known else crop_features(rgb)
            out.domain_score = None if feats is None else float(distances(feats, domain)[0])
        reason = None if gates is None else (check_quality(rgb, gates, domain, feats, out.domain_score, cut)
                                             or outside(rgb.shape[0], rgb.shape[1], sizes))
        if reason:
            out.status, out.reason = "rejected", reason
        else:
            out.pixels = rgb
    except ImageError as exc:
        out.reason = str(exc)
        if isinstance(exc, FileChanged):
            out.content_hash = None  # not recorded: a rerun reads what the file holds then
    except MemoryError:
        out.reason = "out of memory decoding the image"
    out.seconds = time.perf_counter() - t0
    return out, out.pixels


@dataclass
class Tally:
    """Counts per status and the wall time, for the end-of-batch summary line."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys((*STATUSES, "skipped"), 0))
    started: float = field(default_factory=time.perf_counter)

    def add(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1

    @property
    def processed(self) -> int:
        return sum(self.counts[s] for s in STATUSES)

    def line(self) -> str:
        dt = time.perf_counter() - self.started
        c = self.counts
        skipped = f", skipped {c['skipped']} already recorded" if c.get("skipped") else ""
        # the model's rate: a rejected or missing file takes no model time (one failed file read 11,000/s)
        rate = f" ({c['classified'] / dt:.1f} images/s)" if c["classified"] and dt > 0 else ""
        return (
            f"classified {c['classified']}, rejected {c['rejected']}, failed {c['failed']}{skipped}"
            f" in {dt:.1f} s{rate}"
        )
