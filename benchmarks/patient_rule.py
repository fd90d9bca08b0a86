"""Patient calls of a bundle on the split's validation and test patients, screened as `edgekit screen`
screens crop files (the device runtime, the quality gates and the domain guard, then the one
patient rule, :meth:`edgekit.manifest.PatientRule.decide`): the manifest's rule and the rule with
evidence on both sides chosen on the validation patients only (:func:`choose_patient_rule`).

    python -m edgekit.benchmarks.patient_rule --split runs/split.json [--bundle BUNDLE] \\
        [-o benchmarks/results/patient_rule.json] [--write-rule]

Reports, per part and rule: infected patients called positive, controls called positive (the target
is 0), referrals, each with a Wilson 95% interval; the crops refused by the gates or the guard; the
share of crops in the uncertain band and what narrowing it costs (band edges chosen on the
validation crops at lower precision targets, measured on the test crops). ``--write-rule`` writes
the chosen rule into BUNDLE's manifest (its signature is removed: sign it again with `edgekit sign`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

BAND_TARGETS = (0.99, 0.98, 0.95, 0.90)


def screen_part(clf: Any, paths: list[Path], n_workers: int = 2) -> list[dict[str, Any]]:
    """Each crop file through the device's own path (decode, quality gates with the domain guard,
    inference), as record rows (what `edgekit screen` stores)."""
    from edgekit.device.pipeline import classify_batch
    from edgekit.device.quality import DEFAULT_GATES
    from edgekit.device.screening import outcome_row

    rows: list[dict[str, Any]] = []
    for a in range(0, len(paths), 256):
        chunk = [(str(p), p, None) for p in paths[a : a + 256]]
        rows.extend(outcome_row(o) for o in classify_batch(chunk, clf, DEFAULT_GATES, n_workers))
    return rows


def patient_calls(rows: list[dict[str, Any]], groups: list[str], infected: dict[str, bool], decision: Any,
                  domain: Any) -> list[dict[str, Any]]:
    """Each patient's summary (:func:`edgekit.device.screening.summarize`, the screen's own)."""
    from edgekit.device.screening import summarize

    by: dict[str, list[dict[str, Any]]] = {}
    for r, g in zip(rows, groups, strict=True):
        by.setdefault(g, []).append(r)
    out = []
    for g in sorted(by):
        s = summarize(g, by[g], decision, domain=domain)
        out.append({"patient": g, "infected": infected[g], "cells": s.crops, "parasitized": s.parasitized,
                    "refused": s.rejected, "fraction": s.fraction, "ci95": list(s.ci95),
                    "decision": s.decision, "domain_ok": s.validated})
    return out


def tally(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """Infected called positive, controls called positive, referrals (Wilson 95% intervals)."""
    from edgekit.metrics import proportion

    inf = [c for c in calls if c["infected"]]
    ctl = [c for c in calls if not c["infected"]]
    return {
        "infected_positive": proportion(sum(c["decision"] == "positive" for c in inf), len(inf), empty=None),
        "controls_positive": proportion(sum(c["decision"] == "positive" for c in ctl), len(ctl), empty=None),
        "controls_negative": proportion(sum(c["decision"] == "negative" for c in ctl), len(ctl), empty=None),
        "referred": proportion(sum(c["decision"] == "refer" for c in calls), len(calls), empty=None),
        "infected_referred": sum(c["decision"] == "refer" for c in inf),
        "controls_referred": sum(c["decision"] == "refer" for c in ctl),
        "domain_not_validated": sum(not c["domain_ok"] for c in calls),
    }


def band_costs(y_val: np.ndarray, p_val: np.ndarray, y: np.ndarray, p: np.ndarray,
               cutoff: float) -> list[dict[str, Any]]:
    """Band edges chosen on the validation crops at each precision target, measured on ``p``: the share
    of crops left uncertain and the precision / NPV of the single-cell calls outside the band."""
    from edgekit.manifest import Thresholds
    from edgekit.metrics import proportion
    from edgekit.thresholds import band_edges, band_report

    out: list[dict[str, Any]] = []
    if not (len(p) and len(p_val) and y_val.any() and not y_val.all()):
        return out  # no classified crops, or validation crops of one class only: no band to choose
    for target in BAND_TARGETS:
        pos, neg = band_edges(y_val, p_val, cutoff, target)
        b = band_report(y, p, Thresholds(positive=pos, negative=neg, cutoff=cutoff))
        out.append({"target": target, "negative_edge": neg, "positive_edge": pos,
                    "uncertain": proportion(b["uncertain"], len(p)), "precision": b["precision"],
                    "npv": b["npv"], "called_positive": b["called_positive"],
                    "called_negative": b["called_negative"]})
    return out


def _first_per_group(items: list[Any], limit: int) -> list[Any]:
    """The first ``limit`` items of each group, in order."""
    seen: dict[str, int] = {}
    kept = []
    for i in items:
        seen[i.group] = seen.get(i.group, 0) + 1
        if seen[i.group] <= limit:
            kept.append(i)
    return kept


def _pct(d: dict[str, Any]) -> str:
    lo, hi = d["ci95"]
    return f"{d['k']}/{d['n']} ({100 * lo:.0f}-{100 * hi:.0f}%)"


def write_rule(bundle: Path, rule: Any) -> None:
    """Write ``rule`` as the bundle's ``patient_rule`` (the rest of the manifest unchanged); the old
    signature no longer matches and is removed."""
    from edgekit.manifest import Manifest, atomic_write_text, json_default, manifest_path, read_manifest_data
    from edgekit.signing import SIGNATURE_NAME

    data = read_manifest_data(bundle)
    data["patient_rule"] = asdict(rule)
    Manifest.from_dict(data)  # still a valid manifest
    (Path(bundle) / SIGNATURE_NAME).unlink(missing_ok=True)
    atomic_write_text(manifest_path(bundle), json.dumps(data, indent=2, default=json_default) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", required=True, type=Path, help="split file by patient (`edgekit split`)")
    ap.add_argument("--bundle", type=Path, default=None, help="Default: the bundle shipped with edgekit.")
    ap.add_argument("--format", dest="fmt", default=None, help="Model format (default: the device's first).")
    ap.add_argument("--parts", default="val,test", help="Split parts to report (val is always screened).")
    ap.add_argument("--limit", type=int, default=None,
                    help="At most this many crops per patient (quick runs).")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("-o", "--out", type=Path, default=None, help="JSON results.")
    ap.add_argument("--write-rule", action="store_true",
                    help="Write the rule chosen on the validation patients into BUNDLE's manifest "
                         "(removes its signature: sign it again).")
    args = ap.parse_args(argv)

    from edgekit.device.runtime import default_bundle_dir, load_classifier
    from edgekit.splits import load_split
    from edgekit.thresholds import choose_patient_rule

    bundle = args.bundle or default_bundle_dir()
    clf = load_classifier(bundle, args.fmt, threads=1, allow_unsigned=True, warn=lambda _l: None)
    decision, domain = clf.manifest.decision, clf.manifest.domain
    split, _ = load_split(args.split)
    root = Path(split.data_root)
    pos_class = split.classes.index(decision.counted_label)
    parts = ["val", *[p for p in args.parts.split(",") if p and p != "val"]]
    screened: dict[str, dict[str, Any]] = {}
    for part in parts:
        items = split.parts[part]
        if args.limit:
            items = _first_per_group(items, args.limit)
        rows = screen_part(clf, [root / i.path for i in items], args.workers)
        groups = [i.group for i in items]
        y = np.array([i.label == pos_class for i in items])
        infected = {g: bool(y[[k for k, h in enumerate(groups) if h == g]].any()) for g in set(groups)}
        screened[part] = {"rows": rows, "groups": groups, "y": y, "infected": infected}
        print(f"{part}: {len(items)} crops of {len(infected)} patients screened", file=sys.stderr, flush=True)

    val = screened["val"]
    val_calls = patient_calls(val["rows"], val["groups"], val["infected"], decision, domain)
    controls = [c["fraction"] for c in val_calls if not c["infected"]]
    infected_f = [c["fraction"] for c in val_calls if c["infected"]]
    rule = choose_patient_rule(controls, infected_f, stop_cells=decision.rule.stop_cells)
    rules = {"manifest": decision.rule, "evidence": rule}

    def classified(part: str) -> tuple[np.ndarray, np.ndarray]:
        s = screened[part]
        keep = [k for k, r in enumerate(s["rows"]) if r["status"] == "classified"]
        return s["y"][keep], np.array([s["rows"][k]["p_positive"] for k in keep], dtype=np.float64)

    y_val, p_val = classified("val")
    out: dict[str, Any] = {
        "bundle": str(bundle), "format": clf.fmt, "model_sha256": clf.model_sha256, "split": str(args.split),
        "limit_per_patient": args.limit, "cutoff": decision.cutoff,
        "band": {"negative": decision.thresholds.negative, "positive": decision.thresholds.positive},
        "rules": {k: asdict(r) for k, r in rules.items()}, "parts": {},
    }
    for part in [p for p in parts if p in args.parts.split(",")]:
        s = screened[part]
        statuses = [r["status"] for r in s["rows"]]
        y, p = classified(part)
        from edgekit.metrics import proportion

        uncertain = sum(r["decision"] == "uncertain" for r in s["rows"] if r["status"] == "classified")
        res: dict[str, Any] = {
            "patients": len(s["infected"]), "infected": sum(s["infected"].values()),
            "crops": len(statuses), "classified": statuses.count("classified"),
            "refused": statuses.count("rejected"), "failed": statuses.count("failed"),
            "uncertain_band": proportion(uncertain, len(p), empty=None),
            "band_costs": band_costs(y_val, p_val, y, p, decision.cutoff), "rules": {},
        }
        for name, r in rules.items():
            calls = patient_calls(s["rows"], s["groups"], s["infected"], replace(decision, rule=r), domain)
            res["rules"][name] = {**tally(calls), "per_patient": calls}
            t = res["rules"][name]
            print(f"{part} {name:8s}: infected positive {_pct(t['infected_positive'])}, controls positive "
                  f"{_pct(t['controls_positive'])}, referred {_pct(t['referred'])} "
                  f"({t['infected_referred']} infected, {t['controls_referred']} controls)", flush=True)
        u = res["uncertain_band"]
        print(f"{part}: {res['crops']} crops, {res['refused']} refused, uncertain band {_pct(u)}; narrowing: "
              + ("; ".join(f"{c['target']:.0%} -> {100 * c['uncertain']['value']:.1f}% uncertain "
                           f"(precision {c['precision'] or 0:.3f}, NPV {c['npv'] or 0:.3f})"
                           for c in res["band_costs"]) or "-"), flush=True)
        out["parts"][part] = res
    print(f"rule chosen on validation patients: {rule.describe()} ({rule.source})", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1, default=float) + "\n")
    if args.write_rule:
        write_rule(bundle, rule)
        print(f"wrote the rule into {bundle}/manifest.json; sign it again: edgekit sign {bundle} --key KEY",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
