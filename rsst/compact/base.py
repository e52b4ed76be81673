"""The compaction plan and the helpers the CNN and ViT planners share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rsst.graph import pair  # noqa: F401 - re-exported for the planners

PLAN_VERSION = 1


@dataclass
class Plan:
    """What to shrink (JSON-able ``modules``) plus what the export needs in memory.

    ``modules`` maps a module name to ``{"type": conv|dwconv|bn|linear|attention, "in": kept
    input indices or None, "out": kept output indices or None}`` (attention: ``"heads"``,
    ``"num_heads"``, ``"head_dim"``). ``folds`` maps a consumer module to the constant
    contribution (per output unit) of the channels removed from its input.
    """

    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    units: list[dict[str, Any]] = field(default_factory=list)  # one per structural unit
    notes: list[str] = field(default_factory=list)
    folds: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)  # name → (target, Δ)
    pairs: dict[str, str] = field(default_factory=dict)  # conv → its BatchNorm (for the table)

    def to_json(self) -> dict[str, Any]:
        return {"version": PLAN_VERSION, "modules": self.modules}


def summarize_stayed(plan: Plan) -> None:
    """Append one note per reason pruned units stayed, most frequent first."""
    totals: dict[str, int] = {}
    for unit in plan.units:
        for reason, count in unit["stayed"].items():
            key = reason.split(" feeds ")[0] if reason.startswith("constant") else reason
            key = "a BatchNorm shift (β not zeroed) feeds a k×k conv" if key.startswith(
                "constant") else key
            totals[key] = totals.get(key, 0) + count
    for reason, count in sorted(totals.items(), key=lambda kv: -kv[1]):
        plan.notes.append(f"{count} pruned channel(s) stayed: {reason}")
