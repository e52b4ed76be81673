"""``omp``: one-shot magnitude pruning — train the dense network (state 0), remove the smallest
|θ| globally down to --target-remain in one step, rewind (--rewind), train the pruned network.

Without --target-remain it is iterative magnitude pruning (IMP, or IMP-Refill with groups).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rsst.methods.registry import register_method
from rsst.methods.scored import ScoredMethod

if TYPE_CHECKING:
    import torch

    from rsst.methods.base import PruneContext


@register_method
class OMP(ScoredMethod):
    name = "omp"
    at_init = False

    def score(self, ctx: PruneContext) -> torch.Tensor:
        return ctx.arena.weight.abs()
