"""``synflow`` (Tanaka et al. 2020): data-free iterative synaptic flow, |θ ⊙ ∂R/∂θ| with
R = Σ f_|θ|(1), --synflow-iterations scorings on the exponential schedule with re-masking
(`rsst.scores.synflow_iterate`), in float64.

The iterations before the last happen here; the elements they removed get score −inf, so the
loop's global cut (``removal_count``) removes them and then the lowest of the last scoring —
exactly the schedule's last step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rsst.methods.registry import register_method
from rsst.methods.scored import ScoredMethod, arena_scores, hard_masks
from rsst.scores import synflow_iterate

if TYPE_CHECKING:
    import torch

    from rsst.methods.base import PruneContext


@register_method
class SynFlow(ScoredMethod):
    name = "synflow"

    def score(self, ctx: PruneContext) -> torch.Tensor:
        masks = hard_masks(ctx)
        alive = int(sum(int(m.sum()) for m in masks.values()))
        total = int(ctx.structure.prunable.sum())
        keep = alive - self.removal_count(alive, total, ctx.config, ctx.state)
        input_shape = getattr(ctx.model, "rsst_input_size", None)
        if input_shape is None:
            input_shape = tuple(ctx.batches(1)[0][0].shape[1:])
        masks, scores = synflow_iterate(ctx.model, masks, keep, ctx.config.synflow_iterations,
                                        input_shape)
        flat = arena_scores(ctx.arena, scores)
        removed = arena_scores(ctx.arena, {n: ~m for n, m in masks.items()}).bool()
        return flat.masked_fill_(removed, -math.inf)
