"""``snip`` (Lee et al. 2019): connection sensitivity |θ ⊙ Σ_b ∂L_b/∂θ| over --score-batches
training batches (`rsst.scores.snip_scores`), at initialization to --target-remain. BatchNorm
in eval mode while scoring (the authors' snip-public), or in training mode with --score-bn train
(what the research code did)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rsst.methods.oneshot import ScoredMethod, arena_scores
from rsst.methods.registry import register_method
from rsst.scores import snip_scores

if TYPE_CHECKING:
    import torch

    from rsst.methods.base import PruneContext


@register_method
class SNIP(ScoredMethod):
    name = "snip"
    summary = "|θ·∂L/∂θ| at init"
    #: BatchNorm mode of the reference implementation, used without --score-bn
    score_bn = "eval"

    def score(self, ctx: PruneContext) -> torch.Tensor:
        train = (ctx.config.score_bn or self.score_bn) == "train"
        scores = snip_scores(ctx.model, ctx.structure.prunable_names,
                             ctx.batches(ctx.config.score_batches), train=train)
        return arena_scores(ctx.arena, scores)
