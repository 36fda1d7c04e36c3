"""Axis metadata shared by bundles, packs, policies and metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class AxisSpec:
    """One behaviour axis: ``pos_label`` is the side the axis points to (e.g. harmful).

    ``read_depth`` (optional, from the axis card): the relative depth (0 = first decoder layer,
    1 = last) every model reads this axis at, instead of the per-axis agreement rule; a property of
    the behaviour, fixed per catalogue, so it needs no target labels (``probes.axis_layers``)."""

    name: str
    pos_label: str = "positive"
    neg_label: str = "negative"
    description: str = ""
    read_depth: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AxisSpec:
        return cls(**{k: data[k] for k in ("name", "pos_label", "neg_label", "description", "read_depth")
                      if data.get(k) is not None})
