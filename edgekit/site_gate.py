# pyright: basic
"""What a site whose gate failed can do next, read from the site bundle's manifest alone.

The gate holds the upper 95% bound of the mean whole-field parasitemia error over the site's test
fields. It misses for one of two reasons, and each has its own remedy:

- the mean itself is over the bound: the model (or the labels it is judged on) is off, and more
  test fields will not change that;
- the mean is under the bound but the interval is wide: the bound's half-width shrinks as one over
  the square root of the number of fields, so about ``n * (half-width / room)**2`` test fields with
  errors like these would show it (``room`` = bound - mean).

Either way the fields that cost most are named first: on the IML fields the largest errors were
mostly fields with parasitized cells boxed as uninfected or not boxed at all, so their labels are
what a reviewer should look at before anything is retrained.
"""

from __future__ import annotations

import math
from typing import Any

SHOWN_FIELDS = 3  # the largest-error test fields named


def field_errors(manifest: Any) -> dict[str, float]:
    """Each site test field's whole-field parasitemia error in points (called - labelled), from the
    manifest's ``evaluation.site.test.whole_fields.per_field``; empty when not recorded."""
    per_field = _test_whole_fields(manifest).get("per_field") or {}
    return {f: 100.0 * (r["called"] - r["labelled"]) for f, r in per_field.items()}


def _test_whole_fields(manifest: Any) -> dict[str, Any]:
    test = (manifest.evaluation.get("site") or {}).get("test") or {}
    return test.get("whole_fields") or {}


def fields_to_show(mean: float, upper: float, limit: float, n: int) -> int | None:
    """About how many test fields with errors like these would put the upper bound of their mean
    under ``limit``; None when the mean itself is not under it (more fields cannot show it)."""
    if n < 2 or not mean < limit or not math.isfinite(upper):
        return None
    if upper <= limit:
        return n
    return math.ceil(n * ((upper - mean) / (limit - mean)) ** 2)


def _error_advice(manifest: Any, gate: Any, errors: dict[str, float]) -> list[str]:
    limit = gate.bounds.get("parasitemia_error")
    upper, mean = gate.measured.get("parasitemia_error"), gate.measured.get("parasitemia_error_mean")
    if limit is None or upper is None or mean is None or upper <= limit:
        return []
    need = fields_to_show(mean, upper, limit, len(errors))
    if need is None:
        return [f"the mean error itself ({mean:.2f} points) is over {limit:g}: more test fields will not "
                "show the bound; check the largest errors' labels first, then the model"]
    line = (f"the mean error ({mean:.2f} points) is under {limit:g} but {len(errors)} test fields bound it "
            f"only to {upper:.2f}: about {_about(need)} test fields with errors like these would show it")
    share = _test_share(manifest)
    if share:
        line += f" (adapt tests on {share:.0%} of the labelled fields: about {_about(need / share)} "
        line += "labelled in all)"
    return [line]


def _about(n: float) -> str:
    """A rough count to two figures (1,886 -> "1,900")."""
    return f"{float(f'{n:.2g}'):,.0f}"


def _test_share(manifest: Any) -> float | None:
    """The share of the site's labelled fields that adapt kept for its test (None when not recorded)."""
    counts = ((manifest.training or {}).get("adaptation") or {}).get("site_fields") or {}
    counts = {k: v for k, v in counts.items() if isinstance(v, int)}
    total = sum(counts.values())
    return counts.get("test", 0) / total if total else None


def gate_advice(manifest: Any) -> list[str]:
    """Lines saying what a failed site gate rests on and what to do next (nothing when it passed)."""
    domain = getattr(manifest, "domain", None)
    gate = domain.gate if domain is not None else None
    errors = field_errors(manifest)
    if gate is None or gate.passed or not errors:
        return []
    return [*_error_advice(manifest, gate, errors), _worst_fields(manifest, errors)]


def _worst_fields(manifest: Any, errors: dict[str, float]) -> str:
    """The line naming the test fields with the largest errors and their share of the total."""
    worst = sorted(errors, key=lambda f: -abs(errors[f]))[:SHOWN_FIELDS]
    total = sum(abs(e) for e in errors.values())
    share = sum(abs(errors[f]) for f in worst) / total if total else 0.0
    coverage = _test_whole_fields(manifest).get("label_coverage") or {}
    incomplete = set(coverage.get("incompletely_labelled") or [])
    named = ", ".join(f"{f} {errors[f]:+.1f}{' (incompletely labelled)' if f in incomplete else ''}"
                      for f in worst)
    return (f"largest test-field errors (points, called - labelled): {named}; "
            f"{share:.0%} of the total error: review their labels before retraining "
            "(`edgekit site check BUNDLE --dataset CELLS --field-images FIELDS --review review.html`)")
