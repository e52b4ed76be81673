"""``grasp`` (Wang et al. 2020): GraSP's S = −θ ⊙ Hg (logits / --grasp-temperature, Hessian-
gradient product by double backprop, `rsst.scores.grasp_scores`); the weights of HIGHEST S go,
so the ranking score here is −S. No absolute value (the research code's abs() is a deviation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rsst.methods.registry import register_method
from rsst.methods.scored import ScoredMethod, arena_scores
from rsst.scores import grasp_scores

if TYPE_CHECKING:
    import torch

    from rsst.methods.base import PruneContext


@register_method
class GraSP(ScoredMethod):
    name = "grasp"
    #: BatchNorm mode of the reference implementation, used without --score-bn
    score_bn = "train"

    def score(self, ctx: PruneContext) -> torch.Tensor:
        train = (ctx.config.score_bn or self.score_bn) == "train"
        scores = grasp_scores(ctx.model, ctx.structure.prunable_names,
                              ctx.batches(ctx.config.score_batches),
                              temperature=ctx.config.grasp_temperature, train=train)
        return -arena_scores(ctx.arena, scores)
