"""Focus judged within sessions (issue 22): which rule refuses blurred fields and keeps sharp ones.

    python -m edgekit.benchmarks.focus_sessions [--rows CACHE.json] [--no-write]

Every path that has sessions (a folder through ``screen --fields``, the camera, the phone through
``serve``) judges a field by :meth:`edgekit.device.field.focus.FocusRule.reason` against the
session's recent counted fields (:func:`edgekit.device.screening.check_field`); this replays that
judgement on scored copies, so every path's verdicts are the same ones.

Fields: IML (all 172 dev fields, with its burned-in bar kept sharp on blurred copies, as a camera
draws it after the optics, and cut above the bar), BCCD (every 2nd) and NIH-like (60 seeds), as they
are and with a mark burned in (the same mark for a whole session). Sessions are runs of SESSION
consecutive fields (IML within its stain groups); even sessions calibrate (any parameter is chosen on
them), odd ones are held out. Each field is scored sharp and blurred (SIGMAS), JPEG re-encoded or
noisy (``focus_floor.MODES``), by the shared measure (marks read) and with marks left out.

Each copy is also scored on TILES (marks left out): a field in focus somewhere keeps sharp tiles
where a field blurred as a whole has none; a tile statistic (sharpest, 2nd, 3rd, median tile) is
tried as the score, chosen on the calibration sessions like the floors.

Orders replayed per session and sigma: ``sharp_first`` (the first half of the session's fields sharp,
the rest blurred), ``blurred_first`` (the reverse), ``alternating`` and ``all_blurred``; each field
appears once per replay. Reported per rule, set and order: sigma >= 2 refused, sigma 1 and 1.5
refused, sharp refused; and each copy judged alone (``edgekit field`` on one file, the first field
of a session). Rules: today's (marks read, FOCUS_FLOOR, the session rule every path applies), marks
left out at 0.0335, session-relative with marks left out, a "gray zone" (a low floor whatever the
session; between it and the floor a field counts only after a field of the session reached the
floor and near it), and the same two on the tile score. Each candidate's parameters minimise the sum
over the kinds of (sharp refused + sigma >= 2 passed) on the calibration sessions; the held-out
spread over the near ties is reported too. Writes ``benchmarks/results/focus_sessions.json``.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from collections.abc import Callable, Iterator
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from edgekit.benchmarks import focus_floor as ff
from edgekit.paths import shared_data

HERE = Path(__file__).resolve().parent
SIGMAS = (0.0, 1.0, 1.5, 2.0, 3.0, 4.0)
SESSION = 10  # fields per session
NIH_SEEDS = 60
ORDERS = ("sharp_first", "blurred_first", "alternating", "all_blurred")


def field_items() -> list[tuple[str, int, int, str, object]]:
    """(set, session, position in it, field id, source) for every field: IML paths, BCCD paths,
    NIH-like seeds; sessions numbered per set (IML within its stain groups)."""
    out = []
    iml = ff.iml_items(1)
    groups = [[i for i in iml if i[0] <= "PA171809.JPG"], [i for i in iml if i[0] > "PA171809.JPG"]]
    n = 0
    for g in groups:
        for k, (name, path, _) in enumerate(g):
            out.append(("iml", n + k // SESSION, k % SESSION, name, path))
        n += -(-len(g) // SESSION)
    bccd = sorted((shared_data("blood_smear_fields_bccd") / "JPEGImages").glob("*.jpg"))[::2]
    out += [("bccd", k // SESSION, k % SESSION, p.name, p) for k, p in enumerate(bccd)]
    out += [("nih_like", k // SESSION, k % SESSION, f"seed{k}", k) for k in range(NIH_SEEDS)]
    return out


def _variants(name: str, rgb: np.ndarray, session: int) -> list[tuple[str, np.ndarray, Callable]]:
    """(kind, field, mark): IML with its bar kept sharp and cut above it; the others as they are
    and with one mark per session burned in (its style varies with the session)."""
    if name == "iml":
        ink = ff.iml_overlay_pixels(rgb)
        return [("iml_bar", rgb, lambda s, b: ff.reburn(s, b, ink)),
                ("iml_no_bar", rgb[:ff.IML_OVERLAY[0]], lambda s, b: b)]
    # sessions 2j (calibration) and 2j + 1 (held out) get the same mark: both halves see every style
    return [(name, rgb, lambda s, b: b), (f"{name}_mark", rgb, lambda s, b: ff.burn_overlay(b, session // 2))]


def field_of(item: tuple[str, int, int, str, object]) -> np.ndarray:
    """The RGB field of an :func:`field_items` item (an NIH-like field drawn from its seed)."""
    import cv2

    name, _, _, _, src = item
    if name == "nih_like":
        cells = shared_data("malaria_cells")
        crops = [p for c in ("Uninfected", "Parasitized") for p in sorted((cells / c).glob("*"))[::50]]
        return ff.nih_like(crops, 300 + int(src))  # type: ignore[arg-type]
    return np.ascontiguousarray(cv2.imread(str(src))[:, :, ::-1])


def degrade(rgb: np.ndarray, pos: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``rgb`` JPEG re-encoded or noisy, by the mode that field position ``pos`` and ``sigma`` draw."""
    mode = (pos + int(sigma * 2)) % len(ff.MODES)
    return ff.add_noise(rgb, (4.0, 8.0)[mode - 2], rng) if mode >= 2 else ff.jpeg(rgb, (90, 70)[mode])


def copies(item: tuple[str, int, int, str, object], rgb: np.ndarray
           ) -> Iterator[tuple[str, float, np.ndarray]]:
    """(kind, sigma, copy) of every copy of one field: each of its :func:`_variants` blurred by each
    of SIGMAS (marks burned in after the blur), then re-encoded or noisy (:func:`degrade`)."""
    name, session, pos, _, _ = item
    rng = np.random.default_rng(zlib.crc32(f"{name}/{session}/{pos}".encode()))
    for kind, field, mark in _variants(name, rgb, session):
        for sigma in SIGMAS:
            yield kind, sigma, degrade(mark(field, ff.blur(field, sigma)), pos, sigma, rng)


def _score_field(item: tuple[str, int, int, str, object]) -> list[dict]:
    """Every copy of one field: its scores by the shared measure, with marks left out, and with marks
    left out after a further blur of SITE_BLUR_SIGMA (how it responds to blur)."""
    import cv2

    from edgekit.device.field.focus import DEFAULT_RULE, SITE_BLUR_SIGMA, FocusRule
    from edgekit.device.field.marks import burned_marks
    from edgekit.device.field.view import inside_crop

    cv2.setNumThreads(1)
    _, session, pos, fid, _ = item
    out_rule = FocusRule(marks=True)
    rows = []
    for kind, sigma, copy in copies(item, field_of(item)):
        crop = np.ascontiguousarray(inside_crop(copy))
        marks = burned_marks(crop)
        shared = DEFAULT_RULE.score(crop)
        out = out_rule.score(crop, marks) if marks else shared
        response = out_rule.score(cv2.GaussianBlur(crop, (0, 0), SITE_BLUR_SIGMA), marks)
        rows.append({"kind": kind, "session": session, "pos": pos, "field": fid, "sigma": sigma,
                     "marks": len(marks), "shared": round(shared, 5), "out": round(out, 5),
                     "response": round(response, 5),
                     "tiles": [round(t, 5) for t in tile_scores(crop, marks, out_rule)]})
    return rows


TILES = (3, 4)  # rows, columns of the tiles a field is also scored on


def tile_scores(crop: np.ndarray, marks: list, rule: object) -> list[float]:
    """The marks-free score of each of TILES of ``crop``, lowest first (the marks found on the whole
    field left out of each tile they reach): a field in focus somewhere has some sharp tiles, a
    field blurred as a whole has none."""
    h, w = crop.shape[:2]
    ny, nx = TILES
    out = []
    for i in range(ny):
        for j in range(nx):
            y0, y1, x0, x1 = i * h // ny, (i + 1) * h // ny, j * w // nx, (j + 1) * w // nx
            boxes = [(max(a, x0) - x0, max(b, y0) - y0, min(c, x1) - x0, min(d, y1) - y0)
                     for a, b, c, d in marks if a < x1 and c > x0 and b < y1 and d > y0]
            out.append(rule.score(np.ascontiguousarray(crop[y0:y1, x0:x1]), boxes))  # type: ignore[attr-defined]
    return sorted(out)


def score_rows(workers: int = 2) -> list[dict]:
    """Every copy of every field (:func:`_score_field`), on ``workers`` processes."""
    items = field_items()
    with get_context("spawn").Pool(workers) as pool:
        return [r for rows in pool.imap(_score_field, items, chunksize=2) for r in rows]


def load_rows(cache: Path | None) -> list[dict]:
    """The scored copies, read from ``cache`` when there (else scored, and written to it)."""
    if cache and cache.exists():
        return json.loads(cache.read_text())
    rows = score_rows()
    if cache:
        cache.write_text(json.dumps(rows))
    return rows


# A rule under test: (name, key of the score it reads, verdict(score, response, counted scores) -> refused)
Verdict = Callable[[float, float, list[float]], bool]
Rule = tuple[str, str, Verdict]


def replay(rows: list[dict], rule: Rule) -> dict[str, dict[str, list[bool]]]:
    """Refusals of ``rule`` per kind, session half and copy class, every session replayed in every
    order at every blur: {"kind/half/order": {"sharp": [...], "sigma1": ..., "sigma_ge_2": ...}}.
    The counted scores a verdict sees are the session's counted fields so far, as
    :func:`edgekit.device.screening.check_field` keeps them."""
    key, refuse = rule[1], rule[2]
    by: dict[tuple[str, int], dict[tuple[int, float], dict]] = {}
    for r in rows:
        by.setdefault((r["kind"], r["session"]), {})[(r["pos"], r["sigma"])] = r
    out: dict[str, dict[str, list[bool]]] = {}
    for (kind, session), copies in by.items():
        n = 1 + max(p for p, _ in copies)
        half = "held" if session % 2 else "cal"
        for sigma in SIGMAS[1:]:
            for order in ORDERS:
                tally = out.setdefault(f"{kind}/{half}/{order}", {})
                counted: list[float] = []
                for pos, s in _sequence(n, sigma, order):
                    r = copies[(pos, s)]
                    response = r["response"] / max(r[key], 1e-6) if "response" in r else 0.0
                    refused = refuse(r[key], response, counted)
                    label = "sharp" if s == 0 else ("sigma_ge_2" if s >= 2 else f"sigma{s:g}")
                    tally.setdefault(label, []).append(refused)
                    if not refused:
                        counted.append(r[key])
    return out


def _sequence(n: int, sigma: float, order: str) -> list[tuple[int, float]]:
    """(position, sigma) of each field of an ``n``-field session as ``order`` takes them."""
    first = n // 2
    if order == "all_blurred":
        return [(p, sigma) for p in range(n)]
    if order == "alternating":
        return [(p, sigma if p % 2 else 0.0) for p in range(n)]
    a, b = (0.0, sigma) if order == "sharp_first" else (sigma, 0.0)
    return [(p, a if p < first else b) for p in range(n)]


def rates(tallies: dict[str, dict[str, list[bool]]], half: str, kinds: list[str] | None = None,
          orders: tuple[str, ...] = ORDERS) -> dict[str, dict[str, float]]:
    """Refused rates per kind on ``half`` (``cal``/``held``), pooled over ``orders``."""
    out: dict[str, dict[str, list[bool]]] = {}
    for name, tally in tallies.items():
        kind, h, order = name.split("/")
        if h != half or order not in orders or (kinds and kind not in kinds):
            continue
        for label, v in tally.items():
            out.setdefault(kind, {}).setdefault(label, []).extend(v)
    return {k: {label: round(float(np.mean(v)), 4) for label, v in sorted(t.items())} for k, t in out.items()}


def shipped(floor: float | None = None, marks: bool = False) -> Callable[[float, float, list[float]], bool]:
    """The judgement every session path makes today (:meth:`FocusRule.reason` against the sharpest
    of the session's SESSION_RECENT counted fields), at ``floor`` (None: FOCUS_FLOOR)."""
    from edgekit.device.field.focus import FOCUS_FLOOR, SESSION_RECENT, FocusRule

    rule = FocusRule(floor=FOCUS_FLOOR if floor is None else floor, marks=marks)
    return lambda s, _, counted: rule.reason(s, max(counted[-SESSION_RECENT:], default=None)) is not None


def relative(floor: float, ratio: float) -> Callable[[float, float, list[float]], bool]:
    """Session-relative: refused under ``floor``, or under ``ratio`` x the sharpest recent counted field."""
    from edgekit.device.field.focus import SESSION_RECENT

    return lambda s, _, counted: s < floor or s < ratio * max(counted[-SESSION_RECENT:], default=0.0)


def gray_zone(low: float, floor: float, ratio: float) -> Callable[[float, float, list[float]], bool]:
    """Refused under ``low`` whatever the session; between ``low`` and ``floor`` counted only when a
    recent counted field of the session reached ``floor`` and the field keeps ``ratio`` x the sharpest
    such field (a session that starts blurred has none: refused); at ``floor`` and over, the rule of
    today (under SESSION_RATIO x the sharpest recent counted field: refused)."""
    from edgekit.device.field.focus import SESSION_RATIO, SESSION_RECENT

    def refuse(s: float, _: float, counted: list[float]) -> bool:
        recent = counted[-SESSION_RECENT:]
        if s >= floor:
            return s < SESSION_RATIO * max(recent, default=0.0)
        confirmed = [c for c in recent if c >= floor]
        return s < low or not confirmed or s < ratio * max(confirmed)

    return refuse


PLAIN_GRID = [(f, r) for f in (0.028, 0.029, 0.03, 0.031, 0.0335) for r in (0.25, 0.35, 0.45, 0.55)]
GRAY_GRID = [(lo, hi, r) for lo in (0.028, 0.0285, 0.029, 0.0295, 0.03) for hi in (0.0356, 0.0365, 0.038)
             for r in (0.3, 0.35, 0.4, 0.45)]


def cost(rt: dict[str, dict[str, float]]) -> float:
    """Sum over the kinds of (sharp refused + sigma >= 2 passed): what the parameters minimise."""
    return sum(v["sharp"] + 1 - v["sigma_ge_2"] for v in rt.values())


NEAR = 0.01  # calibration cost within this of the best: a near tie (how much the choice itself matters)


def chosen(rows: list[dict], make: Callable, grid: list[tuple], key: str = "out"
           ) -> tuple[tuple, float, list[tuple]]:
    """The ``grid`` point whose rule (``make(*point)`` on score ``key``) costs least on the calibration
    sessions (the first of a tie), that cost, and the points within NEAR of it."""
    costs = [(round(cost(rates(replay(rows, ("", key, make(*p))), "cal")), 4), p) for p in grid]
    best = min(c for c, _ in costs)
    return next(p for c, p in costs if c == best), best, [p for c, p in costs if c <= best + NEAR]


def spread(rows: list[dict], make: Callable, points: list[tuple], key: str = "out"
           ) -> dict[str, dict[str, list[float]]]:
    """[lowest, highest] held-out refused rate per kind and copy class over the rules of ``points``."""
    held = [rates(replay(rows, ("", key, make(*p))), "held") for p in points]
    return {k: {label: [min(h[k][label] for h in held), max(h[k][label] for h in held)] for label in v}
            for k, v in held[0].items()}


# which of a field's tile scores (lowest first) stands for it: the sharpest, 2nd, 3rd sharpest, median
TILE_STATS = {"tile_max": -1, "tile_2nd": -2, "tile_3rd": -3, "tile_median": 6}
TILE_FLOORS = [round(0.026 + 0.001 * k, 3) for k in range(17)]
TILE_GRAY_GRID = [(lo, hi, r) for lo in (0.028, 0.03, 0.032, 0.034) for hi in (0.034, 0.036, 0.038, 0.04)
                  for r in (0.3, 0.35, 0.4, 0.45) if lo < hi]


def tile_candidates(rows: list[dict]) -> tuple[list[Rule], dict]:
    """The tile statistic and its floor (with today's session rule) chosen on the calibration
    sessions, then a gray zone on that statistic: the rules, and what was chosen."""
    from edgekit.device.field.focus import SESSION_RATIO

    for r in rows:
        r.update({name: r["tiles"][i] for name, i in TILE_STATS.items()})
    by_stat = {name: chosen(rows, lambda f: relative(f, SESSION_RATIO), [(f,) for f in TILE_FLOORS], name)
               for name in TILE_STATS}
    stat = min(by_stat, key=lambda n: by_stat[n][1])
    (floor,), floor_cost, _ = by_stat[stat]
    (lo, hi, gr), gray_cost, near = chosen(rows, gray_zone, TILE_GRAY_GRID, stat)
    rules: list[Rule] = [(f"{stat} (marks left out), floor {floor:g}, session rule", stat,
                          relative(floor, SESSION_RATIO)),
                         (f"{stat} (marks left out), gray zone: low {lo:g}, floor {hi:g}, {gr:g} x sharpest "
                          "recent field at the floor", stat, gray_zone(lo, hi, gr))]
    info = {"calibration_cost_by_stat": {n: c[1] for n, c in by_stat.items()}, "stat": stat,
            "floor_cost": floor_cost, "gray_zone_cost": gray_cost,
            "gray_zone_near_ties": {"points": near, "held_out_spread": spread(rows, gray_zone, near, stat)}}
    return rules, info


def alone(rows: list[dict], rule: Rule, half: str) -> dict[str, dict[str, float]]:
    """Refused rates of each copy judged with nothing counted before it (``edgekit field`` on one
    file, the first field of a session), per kind on ``half``."""
    key, refuse = rule[1], rule[2]
    out: dict[str, dict[str, list[bool]]] = {}
    for r in rows:
        if ("held" if r["session"] % 2 else "cal") == half and r["sigma"] in (0, 2, 3, 4):
            label = "sharp" if r["sigma"] == 0 else "sigma_ge_2"
            out.setdefault(r["kind"], {}).setdefault(label, []).append(refuse(r[key], 0.0, []))
    return {k: {label: round(float(np.mean(v)), 4) for label, v in sorted(t.items())} for k, t in out.items()}


def report(rows: list[dict], rule: Rule) -> dict:
    t = replay(rows, rule)
    out: dict = {"score": rule[1]}
    for half in ("cal", "held"):
        out[half] = {"pooled": rates(t, half), **{o: rates(t, half, orders=(o,)) for o in ORDERS},
                     "alone": alone(rows, rule, half)}
    return out


def summary(rows: list[dict]) -> dict:
    """Every rule's refusals per kind, half and order; the candidates' parameters chosen on the
    calibration sessions."""
    (f, r), plain_cost, _ = chosen(rows, relative, PLAIN_GRID)
    (lo, hi, gr), gray_cost, near = chosen(rows, gray_zone, GRAY_GRID)
    rules: list[Rule] = [("today (marks read, FOCUS_FLOOR, session rule)", "shared", shipped()),
                         ("marks left out, floor 0.0335, session rule", "out", shipped(0.0335, True)),
                         (f"marks left out, session-relative: floor {f:g}, {r:g} x sharpest recent", "out",
                          relative(f, r)),
                         (f"marks left out, gray zone: low {lo:g}, floor {hi:g}, {gr:g} x sharpest recent "
                          "field at the floor", "out", gray_zone(lo, hi, gr))]
    tile_rules, tiles = tile_candidates(rows)
    rules += tile_rules
    low_sharp = sorted((r["out"], r["field"], "held" if r["session"] % 2 else "cal") for r in rows
                       if r["kind"] == "iml_bar" and r["sigma"] == 0)[:8]
    return {"rules": {rule[0]: report(rows, rule) for rule in rules},
            "calibration_cost": {"relative": plain_cost, "gray_zone": gray_cost},
            "gray_zone_near_ties": {"points": near, "held_out_spread": spread(rows, gray_zone, near)},
            "tiles": {"grid": TILES, **tiles},
            "iml_lowest_sharp_marks_left_out": low_sharp,
            "fields": {k: len({(r["session"], r["pos"]) for r in rows if r["kind"] == k})
                       for k in sorted({r["kind"] for r in rows})},
            "session_fields": SESSION, "sigmas": SIGMAS, "orders": ORDERS, "copies": len(rows)}


def sessions(cache: Path | None, write: bool) -> None:
    """The rules replayed: rows read from ``cache`` when there (else scored, and written to it)."""
    t0 = time.time()
    result = {**summary(load_rows(cache)), "seconds": round(time.time() - t0, 1)}
    print(json.dumps({k: v for k, v in result.items() if k != "rules"}, indent=1))
    if write:
        (HERE / "results" / "focus_sessions.json").write_text(json.dumps(result, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=Path, help="scored copies (JSON): read if there, else written")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    sessions(args.rows, not args.no_write)


if __name__ == "__main__":
    main()
