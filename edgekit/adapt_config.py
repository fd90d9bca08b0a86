# pyright: basic
"""The settings of ``edgekit site adapt``, with their defaults: the one place they live (the CLI's
defaults and the manifest's record read them). Light at import (standard library only)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from edgekit.errors import DataError
from edgekit.manifest import DEFAULT_GATE_BOUNDS, SITE_CUTOFFS


@dataclass
class AdaptConfig:
    """Fine-tuning settings (stored in the manifest)."""

    epochs: int = 12  # at most (see ``patience``)
    # stop after this many epochs without a better one (None: never). Off: the int8 validation AUC is
    # noisy and late epochs (low lr) are stabler; IML seed 1 stopped at epoch 6 keeping epoch 1 in two
    # sessions; run to the end it kept epoch 7 (test AUC 0.9877 -> 0.9933, sensitivity at specificity
    # 99.5% 0.41 -> 0.67, whole-field error 1.12 -> 0.98 points); 6 of ~45 runs had stopped early
    patience: int | None = None
    lr: float = 0.01
    batch_size: int = 64
    # fraction of the training crops taken from the base model's own data (replay, so it does not forget
    # its first microscope). IML, seeds 0-6 paired with 0.5 (benchmarks/results/site_base_share_iml.json):
    # whole-field error 1.26 -> 1.13 points (lower on 6 of 7), cell AUC 0.9910 -> 0.9941, sensitivity at
    # specificity 99.5% 0.58 -> 0.65; 0 (no replay), seed 0: 1.90 points, AUC 0.990
    base_share: float = 0.2
    train_fields: int | None = None  # use only this many training fields (learning curves)
    block: int = 6  # consecutive frames per split block
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    cutoff: str = "auto"  # count: called = labelled positives on validation cells; field-count: on
    # whole validation fields (every cell the device finds, needs the field images); field-error: the
    # highest cutoff within one standard error of the smallest mean per-field error on those
    # fields (what the gate measures); youden; auto:
    # field-error when the field images are here, else count
    stain: float | None = None  # colour jitter while fine-tuning; None: the base run's own augmentation
    # cap on negative training cells per field (all positives kept): with every negative, the class
    # weights of a few positives (x40 at 10 IML fields) made fine-tuning unstable (site val AUC 0.91 vs 0.98)
    negatives_per_field: int | None = 30
    # found objects that are no labelled cell (white cells, clumps, overlapping pairs: `edgekit site cells`
    # keeps those that touch no parasitized box), taught as not parasitized, at most this many per fully
    # labelled training field (a field whose boxes miss cells has unboxed parasites among its objects:
    # taken from every field, they raised the IML test fields' error, 2.71 -> 3.63 points; from fully
    # labelled fields only, against none, 3 seeds: 1.90 -> 1.51 points, 1.23 -> 0.96 on the fully
    # labelled test fields)
    objects_per_field: int = 10
    # judge and keep an exponential average of the weights over about this many epochs instead of the
    # last step's weights (0: off): with a few hundred steps per epoch, the epoch-end weights are a noisy
    # sample (site val AUC moves by 0.02-0.08 from one epoch to the next). Off: on IML (3 seeds, 1 epoch)
    # cell AUC 0.9923 -> 0.9915, sensitivity 0.56 -> 0.60, whole-field error 1.62 -> 1.84 points
    average_epochs: float = 0.0
    # of the negatives_per_field, this many are the uninfected cells the base model scores highest on each
    # fully labelled training field (cells beside stain debris, overlapping pairs: what it over-calls on
    # whole fields), the rest at random. IML, 3 seeds paired with the same code without them: test
    # sensitivity at specificity 99.5% 0.56 -> 0.61 (higher on every seed), AUC 0.9923 -> 0.9930,
    # whole-field error 1.62 -> 1.58 points (benchmarks/results/site_hard_negatives_iml.json)
    hard_negatives: int = 10
    # of the objects_per_field, this many are the found objects the base model scores highest on each
    # training field (two overlapping cells found as one, a neighbour's parasite inside a cell's outline:
    # what it over-calls on whole fields), the rest at random
    hard_objects: int = 0
    # fine-tune this many times from the base, each run with its own seed (its own sample of negatives
    # and replay crops, its own augmentation), and keep the average of their weights with the batch norms
    # measured again: one model, so a device runs it at the same cost, with less of the one run's luck
    # in it. Costs this many times the fine-tuning time (3: 10-12 min on 2 cores). Off: on IML, three
    # block splits, three runs averaged against each split's first run (what --members 1 gives): test
    # whole-field error 1.10 -> 0.87, 0.87 -> 0.74, 1.03 -> 1.05 points, sensitivity at specificity 99.5%
    # 0.60 -> 0.78, 0.71 -> 0.65, 0.71 -> 0.71; against the three runs' mean, better on one split only;
    # --members 3 end to end: error 1.10 -> 0.98, 0.87 -> 0.77, 1.03 -> 1.11 (within the spread; no gate
    # passed) in 10-12 min (benchmarks/results/site_members_iml.json)
    members: int = 1
    seed: int = 0
    # what the test fields must show before the site guard may vouch (edgekit.manifest.GATE_BOUNDS)
    gate: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_GATE_BOUNDS))

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.lr <= 0 or self.batch_size < 1:
            raise DataError("epochs, lr and batch size must be positive")
        if self.patience is not None and self.patience < 1:
            raise DataError("--patience must be at least 1")
        if not 0.0 <= self.base_share < 1.0:
            raise DataError("--base-share must be in [0, 1)")
        if self.cutoff not in SITE_CUTOFFS:
            raise DataError(f"unknown cutoff method {self.cutoff!r}: {', '.join(SITE_CUTOFFS)}")
        if self.train_fields is not None and self.train_fields < 1:
            raise DataError("--train-fields must be at least 1")
        if self.hard_negatives < 0 or self.hard_objects < 0:
            raise DataError("--hard-negatives and --hard-objects must not be negative")
        if self.members < 1:
            raise DataError("--members must be at least 1")
        if self.average_epochs < 0:
            raise DataError("--average-epochs must not be negative")
