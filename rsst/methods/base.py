"""What a pruning method is: the questions SPEC §2's state machine asks it.

`rsst.loop` runs the states (train, evaluate, save, rewind) and asks the run's `Method`:

- *when* it prunes: `prunes_at_init` (before state 0 trains) and `prunes_after_state`;
- *what* to remove: `score` gives one score per arena element (lowest go first, ranked
  globally over the prunable scope) and `removal_count` how many alive prunable weights go;
- *how* the unstructured mask U becomes the next masks: `refill` (SPEC §3's refill into whole
  groups, or U as is) and `soft` (dropped elements become the pending set P, faded by the
  penalty and cut at the end of the next state; otherwise they die at once);
- *what it adds to the per-step update*: `update_terms`, fields of `rsst.update.UpdateConfig`.

This module imports no torch and nothing heavy, so the registry is cheap to import (the config
and the CLI list the method names from it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn

    from rsst.arena import Arena
    from rsst.config import RunConfig
    from rsst.structure import Structure


@dataclass
class PruneContext:
    """Everything a scorer may look at when a method prunes."""

    model: nn.Module
    arena: Arena
    structure: Structure
    config: RunConfig
    #: ``batches(n)``: the first ``n`` calibration batches (training images, fixed per state)
    batches: Callable[[int], list[tuple[torch.Tensor, torch.Tensor]]]
    #: the state that just trained; -1 when pruning at initialization
    state: int


class Method:
    """Defaults are iterative magnitude pruning after every state but the last, applied hard."""

    #: the ``--method`` name
    name: ClassVar[str] = ""
    #: one line for ``--help`` and the docs
    summary: ClassVar[str] = ""
    #: SPEC §3's refill of U into whole groups (with --criteria / --fillback-rate)
    refill: ClassVar[bool] = False
    #: dropped elements go to the pending set (faded by the penalty, cut after the next state)
    soft: ClassVar[bool] = False

    def prunes_at_init(self, config: RunConfig) -> bool:
        """Prune once before state 0 trains (scores of the initial weights)."""
        return False

    def prunes_after_state(self, state: int, config: RunConfig) -> bool:
        """Prune after ``state`` has trained (and was saved)."""
        return state + 1 < config.states

    def cuts_pending(self, config: RunConfig) -> bool:
        """Cut the pending set at the end of a state (H ← H ∧ ¬P), evaluating again after."""
        return self.soft

    def score(self, ctx: PruneContext) -> torch.Tensor:
        """One float score per arena element; the lowest-scoring alive prunable ones go.
        Elements outside the prunable scope or already dead are ignored whatever their score."""
        return ctx.arena.weight.abs()

    def removal_count(self, alive: int, total: int, config: RunConfig) -> int:
        """How many of the ``alive`` (of ``total``) prunable weights to remove: --rate of the
        alive ones."""
        return int(round(config.rate * alive))

    def update_terms(self, config: RunConfig) -> dict[str, Any]:
        """Fields of `rsst.update.UpdateConfig` this method sets beyond plain masked SGD."""
        return {}
