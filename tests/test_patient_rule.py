"""One patient rule with evidence on both sides (issue 27.2): positive only when the lower Wilson 95%
bound of the called fraction is above the positive fraction, negative only when the upper bound is
below the negative fraction, refused crops toward refer; manifests without the fields keep their
old rule."""

from __future__ import annotations

import json

import pytest

from edgekit.device.screening import summarize
from edgekit.errors import BundleError
from edgekit.manifest import Decision, Manifest, PatientRule, Thresholds
from edgekit.thresholds import choose_patient_rule

OLD = PatientRule(positive_fraction=0.05, negative_fraction=0.05)  # a manifest without the new fields
NEW = PatientRule(positive_fraction=0.05, negative_fraction=0.05, positive_evidence="wilson_lower",
                  refused_crops="unknown")


def test_four_cells_of_seventy_are_no_longer_a_positive():
    """The held-back control of issue 27: 4 of 70 cells (5.7%) crossed the cutoff."""
    assert OLD.decide(4, 70) == "positive"
    assert NEW.decide(4, 70) == "refer"  # lower bound 2.2% does not exclude 5%


@pytest.mark.parametrize(("k", "n", "refused", "old", "new"), [
    (0, 0, 0, "refer", "refer"),
    (30, 100, 0, "positive", "positive"),  # lower bound 22%
    (6, 100, 0, "positive", "refer"),  # 6%: lower bound 2.8%
    (12, 100, 0, "positive", "positive"),  # lower bound 7.0%
    (0, 200, 0, "negative", "negative"),  # upper bound 1.9%
    (0, 200, 2, "negative", "negative"),  # 2 refused: upper bound of 2/202 is 3.5%
    (0, 90, 13, "negative", "refer"),  # a pale slide: 13 refused crops could be anything
    (3, 100, 0, "refer", "refer"),
    (12, 100, 60, "positive", "refer"),  # 60 refused: 12/160 no longer excludes 5%
])
def test_both_rules(k, n, refused, old, new):
    assert OLD.decide(k, n, refused) == old
    assert NEW.decide(k, n, refused) == new


def test_summary_counts_refused_crops_toward_refer_and_says_so():
    decision = Manifest(["Parasitized", "Uninfected"], positive_label="Parasitized",
                        thresholds=Thresholds(0.9, 0.1, cutoff=0.5), patient_rule=NEW).decision
    rows = [{"status": "classified", "p_positive": 0.01, "decision": "negative"}] * 90
    rows += [{"status": "rejected", "reason": "grayscale"}] * 13
    s = summarize("P", rows, decision)
    assert s.decision == "refer" and s.rejected == 13
    assert "13 rejected (counted toward refer)" in s.line()
    assert summarize("P", rows[:90], decision).decision == "negative"
    old = Manifest(["Parasitized", "Uninfected"], positive_label="Parasitized",
                   thresholds=Thresholds(0.9, 0.1, cutoff=0.5), patient_rule=OLD).decision
    assert summarize("P", rows, old).decision == "negative" and "counted toward" not in summarize(
        "P", rows, old).line()


def test_the_form_is_recorded_in_the_manifest_and_the_stored_decision():
    m = Manifest(["Parasitized", "Uninfected"], positive_label="Parasitized", patient_rule=NEW)
    d = json.loads(json.dumps(m.to_dict()))
    assert d["patient_rule"]["positive_evidence"] == "wilson_lower"
    assert d["patient_rule"]["refused_crops"] == "unknown"
    assert Manifest.from_dict(d).patient_rule == NEW
    stored = m.decision.to_dict()
    assert Decision.from_dict(stored).rule == NEW
    # a session or manifest written before the fields existed keeps the old rule
    for key in ("positive_evidence", "refused_crops"):
        del stored["patient_rule"][key]
        del d["patient_rule"][key]
    assert Decision.from_dict(stored).rule == OLD and Manifest.from_dict(d).patient_rule == OLD
    assert "lower 95% bound" in NEW.describe() and "refused crops count toward refer" in NEW.describe()
    assert ">= 5.0%" in OLD.describe()


@pytest.mark.parametrize(("key", "value"), [("positive_evidence", "median"), ("positive_evidence", 5),
                                            ("refused_crops", "negative")])
def test_bad_rule_forms_are_refused(key, value):
    d = Manifest(["Parasitized", "Uninfected"]).to_dict()
    d["patient_rule"][key] = value
    with pytest.raises(BundleError, match=f"patient_rule.{key}"):
        Manifest.from_dict(json.loads(json.dumps(d)))


def test_rule_chosen_on_validation_patients_has_evidence_on_both_sides():
    rule = choose_patient_rule([0.0, 0.029], [0.3, 0.5])
    assert (rule.positive_evidence, rule.refused_crops) == ("wilson_lower", "unknown")
    assert rule.positive_fraction == pytest.approx(0.05) and "lower 95% bound" in rule.source
    legacy = choose_patient_rule([0.0], [0.4], positive_evidence="point", refused_crops="ignored")
    assert legacy.decide(6, 100) == "positive"
