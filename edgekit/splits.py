# pyright: basic
"""Reproducible train/validation/test splits grouped by patient, with a leakage guard.

A split file is JSON: the dataset's classes, the group mode, the seed and fractions, and for each
part the list of ``[relative path, label index, group]``. Its sha256 goes into the run manifest,
so a model can always be traced to the exact images it was trained and tested on.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.data import Dataset, Item
from edgekit.errors import DataError
from edgekit.manifest import atomic_write_text

SPLIT_SCHEMA = "edgekit.split/1"
PARTS = ("train", "val", "test")


@dataclass
class Split:
    classes: list[str]
    parts: dict[str, list[Item]]
    group_mode: str = "none"
    seed: int = 42
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    data_root: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, items in self.parts.items():
            counts = Counter(self.classes[i.label] for i in items)
            out[name] = {
                "images": len(items),
                "groups": len({i.group for i in items}),
                **{c: counts.get(c, 0) for c in self.classes},
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SPLIT_SCHEMA,
            "classes": self.classes,
            "group_mode": self.group_mode,
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "val_fraction": self.val_fraction,
            "data_root": self.data_root,
            "summary": self.summary(),
            "skipped": [list(s) for s in self.skipped],
            "parts": {k: [[i.path, i.label, i.group] for i in v] for k, v in self.parts.items()},
        }


def check_no_leakage(parts: dict[str, list[Item]]) -> None:
    """Refuse any split where one group (patient) appears in two parts."""
    seen: dict[str, str] = {}
    for name, items in parts.items():
        for g in {i.group for i in items}:
            if g in seen and seen[g] != name:
                raise DataError(
                    f"leakage: group {g!r} is in both {seen[g]} and {name}; a patient's images"
                    " must all be in one part"
                )
            seen[g] = name


def _take_groups(
    groups: list[str], sizes: dict[str, int], strata: dict[str, str], fraction: float, rng: random.Random
) -> set[str]:
    """Pick groups so each stratum contributes about ``fraction`` of its images."""
    chosen: set[str] = set()
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for g in groups:
        by_stratum[strata[g]].append(g)
    for stratum in sorted(by_stratum):
        members = sorted(by_stratum[stratum])
        rng.shuffle(members)
        target = fraction * sum(sizes[g] for g in members)
        taken = 0
        for g in members:
            if taken >= target:
                break
            # add the group if that brings the total closer to the target
            if abs(taken + sizes[g] - target) <= abs(taken - target) or taken == 0:
                chosen.add(g)
                taken += sizes[g]
    return chosen


def check_fractions(test_fraction: float, val_fraction: float) -> None:
    """Refuse split fractions outside (0, 1) (the validation part may be 0)."""
    if not (0 < test_fraction < 1 and 0 <= val_fraction < 1):
        raise DataError("fractions must be in (0, 1)")


def make_split(
    ds: Dataset, test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 42
) -> Split:
    """Split by group, stratified by each group's majority class (for NIH: infected patients vs
    uninfected controls). ``val_fraction`` is a fraction of what remains after the test part."""
    check_fractions(test_fraction, val_fraction)
    sizes: Counter[str] = Counter(i.group for i in ds.items)
    label_counts: dict[str, Counter[int]] = defaultdict(Counter)
    for i in ds.items:
        label_counts[i.group][i.label] += 1
    # stratum: sorted set of labels present, so "both classes" patients and controls are balanced
    strata = {g: ",".join(str(k) for k in sorted(c)) for g, c in label_counts.items()}
    groups = sorted(sizes)
    if len(groups) < 3:
        raise DataError(f"only {len(groups)} group(s): cannot make a grouped train/val/test split")
    rng = random.Random(seed)
    test = _take_groups(groups, sizes, strata, test_fraction, rng)
    rest = [g for g in groups if g not in test]
    val = _take_groups(rest, sizes, strata, val_fraction, rng) if val_fraction > 0 else set()
    parts: dict[str, list[Item]] = {p: [] for p in PARTS}
    for item in ds.items:
        part = "test" if item.group in test else "val" if item.group in val else "train"
        parts[part].append(item)
    for name in ("train", "test"):
        if not parts[name]:
            raise DataError(f"the {name} part is empty: too few groups for these fractions")
    check_no_leakage(parts)
    return Split(
        classes=ds.classes,
        parts=parts,
        group_mode=getattr(ds, "group_mode", "none"),
        seed=seed,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        data_root=str(ds.root),
        skipped=list(ds.skipped),
    )


def save_split(split: Split, path: str | os.PathLike) -> str:
    """Write the split file atomically and return its sha256."""
    text = json.dumps(split.to_dict(), indent=1) + "\n"
    atomic_write_text(path, text)
    return hashlib.sha256(text.encode()).hexdigest()


def load_split(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> tuple[Split, str]:
    """Read a split file, check it against the data on disk, and return it with its sha256.

    ``data_root`` overrides the root recorded in the file (the same data at another path).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"split file not found: {path}")
    from edgekit.safefile import read_regular_bytes

    raw = read_regular_bytes(path, 256 << 20, "split file")
    try:
        d = json.loads(raw)
        if not isinstance(d, dict) or d.get("schema") != SPLIT_SCHEMA:
            raise DataError(f"{path} is not an edgekit split file")
        root = data_root if data_root else d.get("data_root", "")
        if not isinstance(root, (str, os.PathLike)):
            raise DataError(f"malformed split file {path}: data_root is not a path")
        split = Split(
            classes=_classes(d["classes"]),
            parts=_parts(d["parts"]),
            group_mode=d.get("group_mode", "none"),
            seed=d.get("seed", 0),
            test_fraction=d.get("test_fraction", 0.2),
            val_fraction=d.get("val_fraction", 0.1),
            data_root=str(root),
            skipped=[tuple(s) for s in d.get("skipped", [])],
        )
    except DataError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"malformed split file {path}: {exc}") from exc
    check_no_leakage(split.parts)
    _check_matches_data(split)
    return split, hashlib.sha256(raw).hexdigest()


def _classes(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
        raise TypeError("classes is not a list of names")
    return list(value)


def _parts(value: Any) -> dict[str, list[Item]]:
    """The parts of a split file, each row checked: an edited file must not train on a test image,
    on a file outside the data folder, or on a label rounded from a number that is none."""
    if not isinstance(value, dict) or not set(value) <= set(PARTS):
        raise TypeError(f"parts must be an object with {', '.join(PARTS)}")
    parts = {name: [_item(row) for row in rows] for name, rows in value.items()}
    listed: dict[str, str] = {}
    for name, items in parts.items():
        for i in items:
            if i.path in listed:
                raise ValueError(f"{i.path} is listed twice (in {listed[i.path]} and {name})")
            listed[i.path] = name
    return parts


def _item(row: Any) -> Item:
    if not isinstance(row, list) or len(row) != 3:
        raise TypeError(f"a row is not [path, label, group]: {str(row)[:80]}")
    rel, label, group = row
    if not isinstance(rel, str) or not isinstance(group, str) or type(label) is not int:
        raise TypeError(f"a row is not [path, label index, group]: {str(row)[:80]}")
    if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ValueError(f"{rel!r} is not a path inside the data folder")
    return Item(rel, label, group)


def _check_matches_data(split: Split) -> None:
    root = Path(split.data_root)
    if not root.is_dir():
        raise DataError(f"the split's data folder is not there: {root} (pass --data-root to point at it)")
    missing = [i.path for items in split.parts.values() for i in items if not (root / i.path).is_file()]
    if missing:
        raise DataError(
            f"split file does not match the data in {root}: {len(missing)} listed file(s) missing,"
            f" e.g. {missing[0]}"
        )
    for items in split.parts.values():
        for i in items:
            folder = i.path.split("/", 1)[0]
            if not 0 <= i.label < len(split.classes) or split.classes[i.label] != folder:
                raise DataError(f"split file does not match the data: {i.path} labelled {i.label}")
