"""The label-coverage split of a site's test-field errors (benchmarks/label_coverage.py)."""

from __future__ import annotations

import pytest

from edgekit.cells import split_errors


def test_errors_split_by_the_fields_label_coverage():
    per_field = {"a": {"called": 0.02, "labelled": 0.01}, "b": {"called": 0.10, "labelled": 0.0},
                 "c": {"called": 0.01, "labelled": 0.03}}
    out = split_errors(per_field, {"a": 0.9, "b": 0.4, "c": None}, 0.8)
    assert out["incompletely_labelled"] == ["b", "c"]  # unknown coverage counts as incomplete
    assert out["fully_labelled_fields"] == 1
    assert out["fully_labelled_mae_points"] == pytest.approx(1.0)
    assert out["incompletely_labelled_mae_points"] == pytest.approx(6.0)
    assert out["mae_points"] == pytest.approx(13 / 3)
