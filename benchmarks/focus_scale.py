"""Rescaled sharp fields against the focus floor (issues 22, 29): could the field's scale be undone?

    python -m edgekit.benchmarks.focus_scale [--no-write] [--rows CACHE.json]

A sharp field enlarged by interpolation (a phone zoom, a higher magnification) has wider edges per
pixel, so the default rule refuses it (BCCD at 1.5x). Two ways to judge it at its own scale, measured
here, neither adopted (``benchmarks/RESULTS.md``):

- **cell scale**: shrink every field whose cells' radius (:func:`edgekit.device.field.segment.
  cell_radius`) is over P px to P px (``FocusMeasure.px_per_radius``), the floor chosen per P on the
  calibration halves (fewest sharp copies refused + sigma >= 2 copies passed, summed over the kinds);
- **interpolation period**: an enlarged field repeats its interpolation weights every few pixels,
  which shows as a peak in the spectrum of its mean second difference along each axis
  (:func:`resample_peak`); a field where it is strong enough could be shrunk back before scoring. Its
  peak is read on enlarged copies (plain and JPEG) and on sharp and blurred ones.

Fields: IML (every 4th), BCCD (every 4th), NIH-like (40), split by blocks as ``focus_floor`` splits
them; copies: sharp at 1x, 1.5x (linear) and 0.7x (area), blurred at native scale with sigma 2 (JPEG
q90) and 3 (q70); for the period also 1.25x, 1.5x then JPEG q75, 1.5x cubic then q90, sigma 2 then
q60 or noise std 4, and 1x at q60. Writes ``benchmarks/results/focus_scale.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np

from edgekit.benchmarks.field_transforms import rescale
from edgekit.benchmarks.focus_floor import BLOCK, add_noise, blur, iml_items, jpeg, nih_like
from edgekit.benchmarks.focus_site_guard import cached_main
from edgekit.device.preprocess import read_image
from edgekit.paths import shared_data

CELL_PX = (30.0, 35.0, 40.0, 45.0, 50.0)  # the cell radii (px) tried
SHARP = ("x1", "x1.5", "x0.7")
BLURRED = ("s2", "s3")  # sigma 2 and 3 at native scale
FLOORS = tuple(round(0.015 + 0.0005 * k, 4) for k in range(131))  # the floors tried per cell radius
JPEG_F = np.arange(1, 5) / 8  # JPEG's 8-px blocks put peaks here: left out
PERIOD_F = (0.1, 0.48)  # the frequencies searched (an enlargement of 1.11x-1.92x)


def fields() -> Iterator[tuple[str, str, np.ndarray, bool]]:
    """(kind, id, field, held_out), one at a time."""
    bccd = sorted((shared_data("blood_smear_fields_bccd") / "JPEGImages").glob("*.jpg"))
    cells = shared_data("malaria_cells")
    crops = sorted((cells / "Uninfected").glob("*"))[::50] + sorted((cells / "Parasitized").glob("*"))[::50]
    for name, path, held in iml_items(4):
        yield "iml", name, read_image(path), held
    for i, p in list(enumerate(bccd))[::4]:
        yield "bccd", p.name, read_image(p), (i // BLOCK) % 2 == 1
    for i in range(40):
        yield "nih_like", f"seed{i}", nih_like(crops, i), (i // 5) % 2 == 1


def copies(rgb: np.ndarray, rng: np.random.Generator) -> dict[str, Callable[[], np.ndarray]]:
    """Name -> how to make each copy of ``rgb``."""
    from edgekit.device.preprocess import opencv

    cv2 = opencv()
    return {"x1": lambda: rgb, "x1.5": lambda: rescale(rgb, 1.5), "x0.7": lambda: rescale(rgb, 0.7),
            "s2": lambda: jpeg(blur(rgb, 2.0), 90), "s3": lambda: jpeg(blur(rgb, 3.0), 70),
            "x1.25": lambda: rescale(rgb, 1.25), "x1.5 q75": lambda: jpeg(rescale(rgb, 1.5), 75),
            "x1.5 cubic q90": lambda: jpeg(cv2.resize(rgb, None, fx=1.5, fy=1.5,
                                                     interpolation=cv2.INTER_CUBIC), 90),
            "s2 q60": lambda: jpeg(blur(rgb, 2.0), 60),
            "s2 noise4": lambda: add_noise(blur(rgb, 2.0), 4.0, rng), "x1 q60": lambda: jpeg(rgb, 60)}


def resample_peak(rgb: np.ndarray) -> tuple[float, float]:
    """(the strongest peak, over its band's median, of the spectrum of the field's mean absolute
    second difference along rows and along columns, the lower of the two at each frequency; the
    enlargement it stands for). Frequencies near JPEG's block harmonics are left out."""
    from edgekit.device.preprocess import opencv

    g = opencv().cvtColor(rgb, opencv().COLOR_RGB2GRAY).astype(np.float32)
    spectra = []
    for axis in (0, 1):
        profile = np.abs(np.diff(g, 2, axis=axis)).mean(axis=1 - axis)
        amp, freq = np.abs(np.fft.rfft(profile - profile.mean())), np.fft.rfftfreq(profile.size)
        spectra.append((amp / np.median(amp[(freq >= 0.05) & (freq <= 0.5)]), freq))
    (a, fa), (b, fb) = spectra
    both = np.minimum(a, np.interp(fa, fb, b))
    searched = (fa >= PERIOD_F[0]) & (fa <= PERIOD_F[1]) & (np.abs(fa[:, None] - JPEG_F).min(axis=1) > 0.01)
    i = int(np.argmax(np.where(searched, both, 0.0)))
    return float(both[i]), float(1 / (1 - fa[i]))


def score_rows() -> list[dict]:
    """Per field and copy: the cells' radius, the default measure's edge ratios at the field's own
    pixels and at each CELL_PX (only the sharp and blurred copies), and the interpolation peak."""
    from edgekit.device.field.focus import FOCUS_MEASURE, edge_ratios
    from edgekit.device.field.segment import cell_radius
    from edgekit.device.field.view import inside_crop

    profile = replace(FOCUS_MEASURE, profile=1.0)  # its edge ratios give the score at any profile
    rng = np.random.default_rng(2029)
    rows = []
    for kind, fid, rgb, held in fields():
        row: dict = {"kind": kind, "field": fid, "held_out": held}
        for name, make in copies(rgb, rng).items():
            x = make()
            row[name] = {"peak": resample_peak(x)}
            if name in SHARP + BLURRED:
                crop = inside_crop(x)
                r = cell_radius(crop)
                own = edge_ratios(crop, measure=profile)
                row[name].update(radius=r, own=own, cell={str(p): edge_ratios(
                    crop, r, replace(profile, px_per_radius=p)) if r > p else own for p in CELL_PX})
        rows.append(row)
    return rows


def refused(rows: list[dict], key: str | None, floor: float) -> dict:
    """Per kind and copy: the share refused at ``floor``, scored at the field's pixels (``key`` None)
    or at cell radius ``key``."""
    from edgekit.device.field.focus import FOCUS_MEASURE, combine

    def score(c: dict) -> float:
        return combine(*(c["own"] if key is None else c["cell"][key]), FOCUS_MEASURE.profile)

    return {kind: {name: round(float(np.mean([score(r[name]) < floor for r in rows if r["kind"] == kind])), 3)
                   for name in SHARP + BLURRED} for kind in sorted({r["kind"] for r in rows})}


def cell_floor(rows: list[dict], key: str) -> float:
    """The floor at cell radius ``key`` with the fewest errors on the calibration halves: sharp copies
    refused + blurred ones passed, rates summed over the kinds and copies."""
    cal = [r for r in rows if not r["held_out"]]

    def cost(floor: float) -> float:
        rates = refused(cal, key, floor)
        return sum(v if name in SHARP else 1 - v for per in rates.values() for name, v in per.items())

    return min(FLOORS, key=cost)


def summary(rows: list[dict]) -> dict:
    """Held-out refusals at the default and at each cell radius (its floor from the calibration
    halves); the interpolation peak per kind and copy (min / median / max over every field)."""
    from edgekit.device.field.focus import FOCUS_FLOOR

    held = [r for r in rows if r["held_out"]]
    kinds = sorted({r["kind"] for r in rows})
    cell = {}
    for p in CELL_PX:
        floor = cell_floor(rows, str(p))
        cell[f"{p:g} px"] = {"floor": floor, "held_out_refused": refused(held, str(p), floor)}
    peaks = {kind: {name: [round(float(q), 1) for q in np.percentile(
        [r[name]["peak"][0] for r in rows if r["kind"] == kind], [0, 50, 100])] for name in rows[0]
        if isinstance(rows[0][name], dict)} for kind in kinds}
    return {"fields": {k: sum(r["kind"] == k for r in rows) for k in kinds},
            "held_out_fields": {k: sum(r["kind"] == k for r in held) for k in kinds},
            "default_held_out_refused": {"floor": FOCUS_FLOOR, **refused(held, None, FOCUS_FLOOR)},
            "cell_scale": cell, "interpolation_peak_min_median_max": peaks}


def main(argv: list[str] | None = None) -> None:
    cached_main(argv, __doc__.split("\n")[0], score_rows, summary, "focus_scale.json")


if __name__ == "__main__":
    main()
