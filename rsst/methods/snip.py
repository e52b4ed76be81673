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
    #: BatchNorm mode of the reference implementation, used without --score-bn
    score_bn = "eval"

    def score(self, ctx: PruneContext) -> torch.Tensor:
        train = (ctx.config.score_bn or self.score_bn) == "train"
        scores = snip_scores(ctx.model, ctx.structure.prunable_names,
                             ctx.batches(ctx.config.score_batches), train=train)
        return arena_scores(ctx.arena, scores)
