"""Station databases for the programme tests and benchmark: real RecordStore files, no model needed."""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgekit.device.domain import FEATURES
from edgekit.device.records import RecordStore, ScreenedWith
from edgekit.manifest import Decision, Domain, PatientRule, Thresholds

DOMAIN = Domain(features=list(FEATURES), mean=[0.0] * len(FEATURES),
                inv_cov=[[float(i == j) for j in range(len(FEATURES))] for i in range(len(FEATURES))],
                field_threshold=3.0, session_threshold=2.5)
RULE = Decision(labels=("Parasitized", "Uninfected"), positive_label="Parasitized",
                thresholds=Thresholds(positive=0.999, negative=0.1, cutoff=0.5), rule=PatientRule())
GUARDED = ScreenedWith("b" * 64, None, "signature not checked", DOMAIN)


def make_station(path: Path, patients: list[str], site: str, cells: int = 20, fields: int = 2,
                 positive_every: int = 0, far: bool = False, reviews: int = 0, crops: int = 0,
                 decision: Decision | None = RULE, screened_with: ScreenedWith | None = GUARDED) -> Path:
    """A station database: each patient one session of ``fields`` whole fields x ``cells`` cells
    (source ids ``fN.jpg#k``); every ``positive_every``-th cell called positive; ``far``: domain
    scores far from the training cells; ``reviews`` cells reviewed, ``crops`` crops kept a session."""
    with RecordStore(path) as store:
        for p in patients:
            s = store.open_session(p, "a" * 64, site=site, operator="op", model_format="tflite",
                                   decision=decision, screened_with=screened_with)
            rows, kept = [], {}
            for f in range(fields):
                for k in range(cells):
                    i = f * cells + k
                    pos = bool(positive_every) and i % positive_every == 0
                    h = hashlib.sha256(f"{path}{p}{i}".encode()).hexdigest()
                    rows.append({"source_id": f"f{f}.jpg#{k}", "source_kind": "field", "content_hash": h,
                                 "status": "classified", "label": "Parasitized" if pos else "Uninfected",
                                 "probability": 0.9995 if pos else 0.99,
                                 "p_positive": 0.9995 if pos else 0.01,
                                 "decision": "positive" if pos else "negative",
                                 "probabilities": [0.0005, 0.9995] if pos else [0.99, 0.01],
                                 "domain_score": 9.0 if far else 1.0})
                    if len(kept) < crops:
                        kept[h] = b"\x89PNG fake crop " + h.encode()
            store.add_records(s, rows, kept)
            recs = store.records(s.id)[:reviews]
            if recs:
                store.set_reviews(s.id, [(int(r["id"]), "not parasitized") for r in recs], reviewer="AO")
    return path
