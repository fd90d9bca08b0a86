"""The session replay of ``benchmarks/focus_sessions.py`` (issue 22): what each rule would refuse
in a session depends on what the session counted before, as ``check_field`` keeps it."""

from __future__ import annotations

import numpy as np

from edgekit.benchmarks.focus_sessions import _sequence, gray_zone, rates, replay, shipped, tile_scores
from edgekit.device.field.focus import FOCUS_FLOOR, SESSION_RATIO


def _rows(sharp: list[float], blurred: list[float], session: int = 1) -> list[dict]:
    """One session's copies: each field sharp and at every blur of the replay (all at ``blurred``)."""
    rows = []
    for pos, (s, b) in enumerate(zip(sharp, blurred, strict=True)):
        for sigma in (0.0, 1.0, 1.5, 2.0, 3.0, 4.0):
            score = s if sigma == 0 else b
            rows.append({"kind": "k", "session": session, "pos": pos, "field": f"f{pos}", "sigma": sigma,
                         "out": score, "shared": score, "response": 0.5 * score})
    return rows


def test_orders_put_each_field_in_once():
    assert _sequence(4, 2.0, "sharp_first") == [(0, 0.0), (1, 0.0), (2, 2.0), (3, 2.0)]
    assert _sequence(4, 2.0, "blurred_first") == [(0, 2.0), (1, 2.0), (2, 0.0), (3, 0.0)]
    assert _sequence(4, 2.0, "alternating") == [(0, 0.0), (1, 2.0), (2, 0.0), (3, 2.0)]
    assert _sequence(3, 2.0, "all_blurred") == [(0, 2.0), (1, 2.0), (2, 2.0)]


def test_the_shipped_rule_is_the_devices_judgement():
    judge = shipped()
    assert judge(0.9 * FOCUS_FLOOR, 0.0, [])  # under the floor, whatever the session
    assert not judge(0.2, 0.0, [])
    assert judge(0.2, 0.0, [0.21 / SESSION_RATIO])  # well below the session's sharpest recent field
    assert not judge(0.2, 0.0, [0.19 / SESSION_RATIO])


def test_refused_fields_do_not_become_the_sessions_reference():
    rows = _rows([0.2, 0.2], [1.0, 0.3])
    refuse = ("r", "out", lambda s, _, counted: s >= 1.0 or s < 0.5 * max(counted, default=0.0))
    t = replay(rows, refuse)
    # 1.0 is refused, so 0.3 is judged against nothing counted: kept (against 1.0 it would be refused)
    assert t["k/held/all_blurred"]["sigma_ge_2"] == [True, False] * 3
    # pooled over the orders: 1.0 refused wherever it comes (3 sigmas x 2 orders where it is blurred
    # first or alone), 0.3 nowhere: 6 of 15 blurred copies
    assert rates(t, "held")["k"]["sigma_ge_2"] == 0.4


def test_a_session_that_starts_blurred_has_no_reference_under_the_gray_zone():
    judge = gray_zone(0.03, 0.036, 0.35)
    assert judge(0.029, 0.0, [0.2])  # under the low floor whatever the session
    assert judge(0.033, 0.0, [])  # between the floors with nothing counted: refused
    assert judge(0.033, 0.0, [0.034, 0.033])  # counted fields under the floor confirm nothing
    assert not judge(0.033, 0.0, [0.05, 0.09])  # 0.033 >= 0.35 x 0.09
    assert judge(0.033, 0.0, [0.1])  # 0.033 < 0.35 x 0.1
    assert judge(0.04, 0.0, [0.2])  # over the floor: today's session rule (0.04 < 0.25 x 0.2)
    rows = _rows([0.05, 0.05, 0.05, 0.05], [0.033] * 4)
    t = replay(rows, ("g", "out", judge))
    assert t["k/held/blurred_first"]["sigma_ge_2"] == [True, True] * 3
    assert t["k/held/sharp_first"]["sigma_ge_2"] == [False, False] * 3


def test_tiles_carry_the_marks_that_reach_them_in_their_own_pixels():
    seen = []

    class Rule:
        def score(self, tile, boxes):
            seen.append((tile.shape[:2], boxes))
            return float(len(seen))

    crop = np.zeros((300, 400, 3), np.uint8)  # 3 x 4 tiles of 100 x 100
    scores = tile_scores(crop, [(90, 10, 120, 20)], Rule())  # a mark across the first two tiles
    assert scores == sorted(scores) and len(scores) == 12
    assert all(shape == (100, 100) for shape, _ in seen)
    assert seen[0][1] == [(90, 10, 100, 20)] and seen[1][1] == [(0, 10, 20, 20)]
    assert all(boxes == [] for _, boxes in seen[2:])
