"""Decision.counted: the one "this cell counts as positive" call, for one probability or an array,
and the one patient-rule fitter that uses it (train and adapt)."""

from __future__ import annotations

import numpy as np

from edgekit.manifest import Decision, PatientRule, Thresholds
from edgekit.thresholds import choose_patient_rule, fit_patient_rule

DECISION = Decision(("Uninfected", "Parasitized"), "Parasitized", Thresholds(0.9, 0.2, cutoff=0.4),
                    PatientRule(0.1, 0.02))


def test_counted_takes_a_float_or_an_array():
    assert DECISION.counted(0.4) is True and DECISION.counted(0.39) is False
    p = np.array([0.1, 0.4, 0.39, 0.9], np.float32)
    got = DECISION.counted(p)
    assert got.dtype == bool and got.tolist() == (p >= DECISION.cutoff).tolist()
    assert DECISION.counted(np.float32(0.5)) is True
    assert DECISION.is_counted_positive(0.4) is DECISION.counted(0.4)


def test_fit_patient_rule_is_the_hand_written_loop():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(6), 50)
    y = np.isin(groups, [4, 5]) & (rng.random(300) < 0.3)
    p = rng.random(300).astype(np.float32)
    controls, infected = [], []
    for g in np.unique(groups):
        sel = groups == g
        (infected if y[sel].any() else controls).append(float((p[sel] >= DECISION.cutoff).mean()))
    assert fit_patient_rule(y, p, groups, DECISION, 500) == choose_patient_rule(controls, infected, 500)
