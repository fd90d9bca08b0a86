"""Training and evaluation arithmetic that needs no TensorFlow (it runs in every environment)."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.evaluate import evaluate_arrays
from edgekit.manifest import Manifest
from edgekit.train import balanced_class_weight


def test_balanced_class_weight():
    w = balanced_class_weight(np.array([0, 0, 0, 1]), 2)
    assert w == {0: pytest.approx(4 / 6), 1: pytest.approx(2.0)}


def test_evaluate_arrays_binary_and_multiclass():
    y = np.array([0, 0, 1, 1, 1, 0])
    p_pos = np.array([0.9, 0.6, 0.2, 0.1, 0.7, 0.8])  # class 0 is positive here
    probs = np.stack([p_pos, 1 - p_pos], 1)
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    decision = Manifest(["Parasitized", "Uninfected"], positive_label="Parasitized").decision
    res, text = evaluate_arrays(y, probs, groups, decision)
    assert res["confusion"] == {"tp": 3, "fn": 0, "fp": 1, "tn": 2}
    assert res["confusion_matrix"] == [[3, 0], [1, 2]]
    assert res["sensitivity"]["value"] == 1.0 and res["specificity"]["value"] == pytest.approx(2 / 3)
    assert {r["patient"]: r["predicted_fraction"] for r in res["patients"]} == {"a": 1.0, "b": 0.0, "c": 1.0}
    assert "Parasitized" in text and "AUC" in text
    y3 = np.array([0, 1, 2, 2])
    probs3 = np.eye(3)[[0, 1, 2, 0]]
    res3, _ = evaluate_arrays(y3, probs3, np.array(["g"] * 4), Manifest(["a", "b", "c"]).decision)
    assert res3["accuracy"]["value"] == 0.75 and "auc" not in res3
    assert res3["per_class"]["c"]["recall"] == 0.5
