"""Physical compaction: remove pruned channels, heads and neurons, exactly.

Masks alone save nothing at inference. This module turns a masked network into a smaller one
that computes the same function (to float32 rounding), and records what it removed as kept-index
lists, so `apply_plan` can rebuild the smaller module shapes from metadata alone.

One module per part: `rsst.compact.cnn` (channel spaces over the torch.fx graph, with the
exactness rules for CNNs), `rsst.compact.vit` (heads and MLP neurons;
compacted blocks are timm's own `Attention`),
`rsst.compact.plan` (`plan_compaction`, `compact_state_dict`, `apply_plan`),
`rsst.compact.count` (parameters and multiply-accumulates), `rsst.compact.random_masks`
(`random_prune`); the `Plan` itself in `rsst.compact.base`.

A unit never loses all of its channels/heads/neurons: the last one stays (its output is zero or
constant anyway), so every layer keeps a valid shape.
"""

from __future__ import annotations

from rsst.compact.base import PLAN_VERSION, Plan
from rsst.compact.count import compact_cost, count_macs, count_params, layer_rows
from rsst.compact.plan import apply_plan, compact_state_dict, plan_compaction
from rsst.compact.random_masks import random_prune
from rsst.compact.vit import stock_attention

__all__ = [
    "PLAN_VERSION",
    "Plan",
    "apply_plan",
    "compact_cost",
    "compact_state_dict",
    "count_macs",
    "count_params",
    "layer_rows",
    "plan_compaction",
    "random_prune",
    "stock_attention",
]
