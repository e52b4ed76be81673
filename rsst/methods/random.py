"""``random``: uniform random scores (seeded by --seed and the state), the control baseline —
at initialization straight to --target-remain, or --rate per state without it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rsst.methods.registry import register_method
from rsst.methods.scored import ScoredMethod
from rsst.scores import random_scores

if TYPE_CHECKING:
    import torch

    from rsst.methods.base import PruneContext

#: spacing of the per-state seeds (state -1, the initialization, included)
_STATE_STRIDE = 1_000_003


@register_method
class RandomPruning(ScoredMethod):
    name = "random"

    def score(self, ctx: PruneContext) -> torch.Tensor:
        seed = (ctx.config.seed + _STATE_STRIDE * (ctx.state + 1)) % 2**63
        return random_scores(ctx.arena.numel, seed, ctx.arena.device)
