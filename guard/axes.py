"""Axis metadata shared by bundles, packs, policies and metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class AxisSpec:
    """One behaviour axis: ``pos_label`` is the side the axis points to (e.g. harmful)."""

    name: str
    pos_label: str = "positive"
    neg_label: str = "negative"
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AxisSpec:
        return cls(**{k: data[k] for k in ("name", "pos_label", "neg_label", "description") if k in data})
