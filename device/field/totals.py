# pyright: basic
"""The total of a batch of fields (`edgekit field`): counted fields, cells, parasitemia and its
interval, and the domain guard's verdict over every counted cell."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgekit.device.field.types import FieldReport
    from edgekit.manifest import Domain


@dataclass
class FieldTotals:
    """The running totals of `edgekit field` over its fields."""

    fields: int  # every field given, counted or not
    counted: int = 0
    cells: int = 0
    parasitized: int = 0
    uncertain: int = 0
    scores: list[float | None] = field(default_factory=list)  # every counted cell's domain score

    def add(self, rep: FieldReport) -> None:
        """Count a field's cells (a rejected field adds nothing)."""
        if rep.rejected is not None:
            return
        self.counted += 1
        self.cells += rep.n_cells
        self.parasitized += rep.n_parasitized
        self.uncertain += rep.count("uncertain")
        self.scores.extend(rep.domain_scores)

    def to_dict(self, classified: bool, domain: Domain | None) -> dict[str, Any]:
        """The total as `edgekit field` reports it; ``classified``: whether a model classified the
        cells (else only the counts), ``domain``: its bundle's guard."""
        from edgekit.metrics import wilson_interval

        total: dict[str, Any] = {"fields": self.fields, "counted": self.counted,
                                 "rejected": self.fields - self.counted, "cells": self.cells}
        if classified and self.cells:
            total.update(parasitized=self.parasitized, uncertain=self.uncertain,
                         parasitemia=self.parasitized / self.cells,
                         ci95=list(wilson_interval(self.parasitized, self.cells)))
        if classified:
            from edgekit.device.domain import session_verdict

            total["domain"] = session_verdict(self.scores, domain, "set of fields")
        return total
