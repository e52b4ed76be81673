"""The shared shape of the scored baselines (omp, random, snip, grasp, synflow): a scorer, ranked
globally over the prunable scope, refilled into whole groups when ``--structure`` has groups,
applied hard; one-shot to ``--target-remain`` or iterative with ``--rate`` per state.

- One-shot (``--target-remain R``): prune once, straight to R of the prunable weights (or to
  a budget, ``--target-macs`` / ``--target-params``: the prune sized by the loop) — at
  initialization (``at_init``; 1 state: prune, then train) or after the dense state 0 (omp;
  2 states: train dense, prune, rewind per --rewind, train the pruned network).
- Iterative (no ``--target-remain``): as IMP, after every state but the last remove --rate of the
  alive prunable weights, ranked by the same scorer on the trained weights (ticket search).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from rsst.methods.base import Method

if TYPE_CHECKING:
    from rsst.arena import Arena
    from rsst.config import RunConfig
    from rsst.methods.base import PruneContext


class ScoredMethod(Method):
    """A baseline: `score` is its scorer; one-shot or iterative as described above."""

    refill = True
    #: the one-shot form prunes at initialization (False: after the dense state 0)
    at_init: ClassVar[bool] = True

    def __init_subclass__(cls, **kw: object) -> None:
        super().__init_subclass__(**kw)
        cls.one_shot_states = 1 if cls.at_init else 2

    @staticmethod
    def one_shot(config: RunConfig) -> bool:
        """The one-shot form: --target-remain, or a budget (--target-macs / --target-params),
        which the loop reaches by sizing this one prune (`prunes_to_budget_at_once`)."""
        return config.target_remain is not None or config.budget() is not None

    def prunes_to_budget_at_once(self, config: RunConfig) -> bool:
        return self.one_shot(config)

    def prunes_at_init(self, config: RunConfig) -> bool:
        return self.one_shot(config) and self.at_init

    def prunes_after_state(self, state: int, config: RunConfig) -> bool:
        if self.one_shot(config):
            return not self.at_init and state == 0
        return super().prunes_after_state(state, config)

    def removal_count(self, alive: int, total: int, config: RunConfig, state: int = -1) -> int:
        """One-shot: down to round(R · total) prunable weights; iterative: --rate of the alive."""
        if config.target_remain is not None:
            return max(0, alive - round(config.target_remain * total))
        return super().removal_count(alive, total, config, state)

    def score(self, ctx: PruneContext) -> torch.Tensor:
        raise NotImplementedError


def arena_scores(arena: Arena, scores: dict[str, torch.Tensor], fill: float = 0.0
                 ) -> torch.Tensor:
    """Per-parameter scores (parameter-shaped) as one float64 score per arena element (in the
    arena's layout, NHWC slots included); elements of other parameters get ``fill``."""
    flat = torch.full((arena.numel,), fill, dtype=torch.float64, device=arena.device)
    for name, value in scores.items():
        arena.slots[name].shaped(flat).copy_(value)
    return flat


def hard_masks(ctx: PruneContext) -> dict[str, torch.Tensor]:
    """H of each prunable weight, parameter-shaped bool."""
    return {name: (ctx.arena.view(name, "code") & 1).bool()
            for name in ctx.structure.prunable_names}
