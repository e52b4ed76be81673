"""What a pruning method is: the questions the state machine (train, prune, rewind) asks it.

`rsst.loop` runs the states (train, evaluate, save, rewind) and asks the run's `Method`:

- *when* it prunes: `prunes_at_init` (before state 0 trains) and `prunes_after_state`;
- *what* to remove: `score` gives one score per arena element (lowest go first, ranked
  globally over the prunable scope) and `removal_count` how many alive prunable weights go;
- *how* the unstructured mask U becomes the next masks: `refill` (Refill's regrouping into whole
  groups, or U as is) and `soft` (dropped elements become the pending set P, faded by the
  penalty and cut at the end of the next state; otherwise they die at once);
- *what it adds to the per-step update*: `update_terms`, fields of `rsst.update.UpdateConfig`
  (per state: `begin_state` may override them);
- *what it does between epochs*: `after_epoch` (ADMM's Z/U update), with `state_tensors` /
  `load_state_tensors` carrying the method's own buffers through checkpoints;
- *which settings it refuses*: `check`, called by the config validation;
- how it meets a budget (``--target-macs`` / ``--target-params``): `prunes_to_budget_at_once`;
- whether it has a one-shot form (``--target-remain``): `one_shot_states`, the number of states
  that form runs (`rsst.config` fills ``--states`` with it and checks it).

This module imports no torch and nothing heavy. A method's name, summary and own settings are
declared in `rsst.methods.catalog`, so the config and the CLI know them without importing it.
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
    #: one line for ``--help``; a built-in method's is in its `rsst.methods.catalog.MethodSpec`
    summary: ClassVar[str] = ""
    #: Refill: U regrouped into whole groups (with --criteria / --fillback-rate)
    refill: ClassVar[bool] = False
    #: dropped elements go to the pending set (faded by the penalty, cut after the next state)
    soft: ClassVar[bool] = False
    #: states of the method's one-shot form (``--target-remain``); None: it has none
    one_shot_states: ClassVar[int | None] = None
    #: ``--target-remain`` is reached over the run's own ``--states`` (ADMM's schedule), not by
    #: a one-shot form with a fixed state count
    target_over_states: ClassVar[bool] = False

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

    def prunes_to_budget_at_once(self, config: RunConfig) -> bool:
        """With a budget (``--target-macs`` / ``--target-params``): every prune is sized to
        land on it (a one-shot form). False: prune by `removal_count` until that prune would
        reach the budget, then size that last one (`rsst.pruning.prune_to_budget`)."""
        return False

    def removal_count(self, alive: int, total: int, config: RunConfig, state: int = -1) -> int:
        """How many of the ``alive`` (of ``total``) prunable weights to remove after ``state``
        (-1: at initialization): --rate of the alive ones.

        With --round-to, a refilling method removes at least what brings the remaining weights
        down to the schedule's (1 − rate)^(state + 1) of ``total``: rounding kept counts up
        holds weights back, and --rate of those alone can stay inside the rounding step of
        every unit (a 32-wide unit asked for 22 keeps 32 with --round-to 16), so the widths
        would never move again; catching up with the schedule makes them move.
        """
        count = int(round(config.rate * alive))
        if self.refill and config.round_to > 1 and state >= 0:
            schedule = round((1.0 - config.rate) ** (state + 1) * total)
            count = max(count, alive - schedule)
        return count

    def update_terms(self, config: RunConfig) -> dict[str, Any]:
        """Fields of `rsst.update.UpdateConfig` this method sets beyond plain masked SGD."""
        return {}

    def check(self, config: RunConfig) -> None:
        """Raise `rsst.errors.UserError` (one line naming the flag) for settings this method
        cannot run with; `rsst.config.validate` calls it."""

    def begin_state(self, ctx: PruneContext, start_epoch: int) -> dict[str, Any]:
        """``ctx.state`` is about to train from ``start_epoch`` (> 0: resumed, the method's
        tensors already restored by `load_state_tensors`). Returns `UpdateConfig` fields for this
        state, over `update_terms`."""
        return {}

    def after_epoch(self, ctx: PruneContext, epoch: int) -> dict[str, float]:
        """``epoch`` (1-based) of ``ctx.state`` has trained; runs before its evaluation and
        checkpoint. Returns extra (finite) numbers for the epoch's metrics line."""
        return {}

    def state_tensors(self, arena: Arena) -> dict[str, torch.Tensor]:
        """The method's own tensors a checkpoint must keep (names without dots)."""
        return {}

    def load_state_tensors(self, arena: Arena, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what `state_tensors` saved (KeyError / ValueError if it does not fit)."""
