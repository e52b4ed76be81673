"""``snip`` (Lee et al. 2019): connection sensitivity |θ ⊙ Σ_b ∂L_b/∂θ| over --score-batches
training batches (`rsst.scores.snip_scores`), at initialization to --target-remain."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rsst.methods.registry import register_method
from rsst.methods.scored import ScoredMethod, arena_scores
from rsst.scores import snip_scores

if TYPE_CHECKING:
    import torch

    from rsst.methods.base import PruneContext


@register_method
class SNIP(ScoredMethod):
    name = "snip"

    def score(self, ctx: PruneContext) -> torch.Tensor:
        scores = snip_scores(ctx.model, ctx.structure.prunable_names,
                             ctx.batches(ctx.config.score_batches))
        return arena_scores(ctx.arena, scores)
