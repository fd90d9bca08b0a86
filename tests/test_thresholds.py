"""Threshold choice from validation predictions."""

from __future__ import annotations

import numpy as np

from edgekit.thresholds import choose_patient_rule, choose_thresholds, youden_cutoff


def test_youden_finds_the_separating_cut():
    y = np.array([0] * 50 + [1] * 50)
    p = np.r_[np.linspace(0.0, 0.39, 50), np.linspace(0.61, 1.0, 50)]
    cut = youden_cutoff(y, p)
    assert 0.39 < cut <= 0.61


def test_band_covers_the_overlap_only():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(500), np.ones(500)].astype(int)
    p = np.clip(np.r_[rng.normal(0.25, 0.2, 500), rng.normal(0.75, 0.2, 500)], 0, 1)
    t = choose_thresholds(y, p, target=0.99)
    assert t.negative <= t.cutoff <= t.positive
    assert 0.3 < t.cutoff < 0.7
    assert t.positive - t.negative > 0.05  # overlapping classes -> a real band
    called_pos = p >= t.positive
    called_neg = p < t.negative
    assert y[called_pos].mean() >= 0.99 and (1 - y[called_neg]).mean() >= 0.99
    assert {t.decide(0.0), t.decide(1.0), t.decide(t.cutoff)} == {"negative", "positive", "uncertain"}


def test_patient_rule_sits_above_controls():
    rule = choose_patient_rule([0.0, 0.01, 0.04], [0.3, 0.5])
    assert rule.positive_fraction == 0.06 or abs(rule.positive_fraction - 0.06) < 1e-9
    assert choose_patient_rule([0.0], [0.4]).positive_fraction == 0.05  # the floor
