"""``admm``: ADMM pruning (Zhang et al. 2018, "A Systematic DNN Weight Pruning Framework using
Alternating Direction Methods of Multipliers"), unstructured or refilled into whole groups.

Every state but the last is an *ADMM state*: it trains f(W) + ρ/2‖W − Z + U‖² over the prunable
scope S (the weights alive and prunable when the state starts), where

- Z is the projection of W + U onto the target sparsity, the others 0 (k: `kept_count`):
  ``--admm-projection layer`` (the paper's per-layer cardinality constraint) keeps in every
  layer the k_l entries of largest |W + U|, each layer at the same kept fraction;
  ``global`` keeps the k entries of largest |W + U| in S, ranked across layers;
- U is the scaled dual variable;
- at the start of the state Z = Π(W), U = 0; after every ``--admm-interval`` epochs
  Z ← Π(W + U), then U ← U + W − Z.

The penalty's gradient ρ·(W − Z + U) is added inside the per-step update (`rsst.update`): the
arena holds one flat anchor a = Z − U and the update adds ρ·(w − a) to the gradient of every
alive element in S (code bit ``ANCHORED``), after the hard mask and the RSST term and before
weight decay. After the state the network is pruned hard — ``layer``: to the k_l largest |W| of
every layer (the paper's final hard prune of the trained weights); ``global``: to Z's support —
refilled into whole groups first when ``--structure`` has groups, and the last state retrains it
masked, with the ADMM term off. The projection itself is always unstructured.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from rsst.errors import UserError
from rsst.methods.base import Method, PruneContext
from rsst.methods.registry import register_method
from rsst.pruning import prune_lowest

if TYPE_CHECKING:
    from rsst.arena import Arena
    from rsst.config import RunConfig


def kept_count(state: int, alive: int, total: int, config: RunConfig) -> int:
    """k of the projection in ADMM state ``state``: the alive prunable weights the prune after it
    keeps. ``--target-remain R``: round(total · R^((state+1)/(states−1))), so the last prune
    reaches R (one prune with ``--states 2``); otherwise ``--rate`` of the alive ones go."""
    if config.target_remain is None:
        return alive - int(round(config.rate * alive))
    fraction = config.target_remain ** ((state + 1) / (config.states - 1))
    return min(alive, int(round(total * fraction)))


def project(values: torch.Tensor, scope: torch.Tensor, k: int) -> torch.Tensor:
    """Support of Π(values): the ``k`` elements of ``scope`` with the largest |value|, ranked
    jointly (ties keep the lower flat index)."""
    return prune_lowest(values.abs(), scope, scope, int(scope.sum()) - k)


#: one layer's part of the projection: its flat range [start, stop) and how many it keeps
Segment = tuple[int, int, int]


def layer_segments(arena: Arena, names: list[str], scope: torch.Tensor, state: int,
                   config: RunConfig) -> list[Segment]:
    """The per-layer projection's segments: each prunable layer keeps `kept_count` of its own
    alive weights, so every layer is held to the same fraction (the paper's constraint)."""
    segments = []
    for name in names:
        slot = arena.slots[name]
        alive = int(scope[slot.offset:slot.stop].sum())
        segments.append((slot.offset, slot.stop, kept_count(state, alive, slot.numel, config)))
    return segments


def project_layers(values: torch.Tensor, scope: torch.Tensor, segments: list[Segment]
                   ) -> torch.Tensor:
    """Support of the per-layer Π(values): in each segment the ``k`` elements of ``scope`` with
    the largest |value| (ties keep the lower flat index); nothing outside the segments."""
    support = torch.zeros_like(scope)
    for start, stop, k in segments:
        support[start:stop] = project(values[start:stop], scope[start:stop], k)
    return support


def _canonical(arena: Arena, flat: torch.Tensor) -> torch.Tensor:
    index = arena.canonical_index()
    return flat.clone() if index is None else flat[index]


def _from_canonical(arena: Arena, target: torch.Tensor, values: torch.Tensor) -> None:
    if values.shape != target.shape:
        raise ValueError(f"ADMM buffer of {values.numel()} elements, the arena has "
                         f"{target.numel()}")
    values = values.to(device=target.device, dtype=target.dtype)
    index = arena.canonical_index()
    if index is None:
        target.copy_(values)
    else:
        target[index] = values


@register_method
class ADMM(Method):
    name = "admm"
    refill = True
    target_over_states = True

    def __init__(self) -> None:
        #: U, flat over the arena (zero outside the scope); None outside ADMM states
        self.dual: torch.Tensor | None = None
        #: Z's support (bool, flat): what the prune after the state keeps
        self.support: torch.Tensor | None = None
        self._scope: torch.Tensor | None = None
        self._kept = 0
        #: the per-layer projection's segments (None: --admm-projection global)
        self._segments: list[Segment] | None = None

    def check(self, config: RunConfig) -> None:
        if config.optimizer != "sgd":
            raise UserError(f"--method admm needs --optimizer sgd (its penalty is a term of the "
                            f"fused SGD update), not {config.optimizer}")
        if config.states < 2:
            raise UserError("--method admm needs --states 2 or more (ADMM training, then masked "
                            f"retraining); got --states {config.states}")
        if config.admm_interval > config.epochs:
            raise UserError(f"--admm-interval {config.admm_interval} is longer than --epochs "
                            f"{config.epochs}: Z and U would never update; give at most "
                            f"{config.epochs}")

    def is_admm_state(self, state: int, config: RunConfig) -> bool:
        """ADMM states are those followed by a prune; the last state retrains masked."""
        return self.prunes_after_state(state, config)

    # -- the loop's hooks --------------------------------------------------------------------
    def begin_state(self, ctx: PruneContext, start_epoch: int) -> dict[str, Any]:
        config, arena = ctx.config, ctx.arena
        if not self.is_admm_state(ctx.state, config):
            self.dual = self.support = self._scope = None
            return {"rho": 0.0}
        prunable = ctx.structure.prunable
        scope = arena.hard_mask & prunable
        self._scope = scope
        self._kept = kept_count(ctx.state, int(scope.sum()), int(prunable.sum()), config)
        self._segments = (layer_segments(arena, ctx.structure.prunable_names, scope, ctx.state,
                                         config)
                          if config.admm_projection == "layer" else None)
        anchor = arena.set_anchored(scope)
        if start_epoch == 0 or self.dual is None:  # a fresh problem: Z = Π(W), U = 0
            weight = arena.weight
            self.support = self._project(weight)
            self.dual = torch.zeros_like(weight)
            anchor.copy_(torch.where(self.support, weight, 0.0))
        return {"rho": config.admm_rho}

    def after_epoch(self, ctx: PruneContext, epoch: int) -> dict[str, float]:
        if self.dual is None or epoch % ctx.config.admm_interval:
            return {}
        residual = self.update(ctx.arena)
        return {"admm_primal_residual": residual}

    def update(self, arena: Arena) -> float:
        """Z ← Π(W + U), U ← U + W − Z, anchor ← Z − U; returns ‖W − Z‖ / ‖W‖ over the scope
        (how far W still is from the sparse Z)."""
        assert self.dual is not None and self._scope is not None
        scope, weight, dual = self._scope, arena.weight, self.dual
        w = torch.where(scope, weight, 0.0)
        v = w + dual
        self.support = self._project(v)
        z = torch.where(self.support, v, 0.0)
        dual.add_(w - z)
        torch.sub(z, dual, out=arena.anchor_buffer())
        norm = float(w.norm())
        residual = float((w - z).norm()) / norm if norm > 0 else 0.0
        return residual if math.isfinite(residual) else 0.0

    def _project(self, values: torch.Tensor) -> torch.Tensor:
        assert self._scope is not None
        if self._segments is None:
            return project(values, self._scope, self._kept)
        return project_layers(values, self._scope, self._segments)

    # -- the prune after an ADMM state: |W| per layer (layer) or Z's support (global) ---------
    def score(self, ctx: PruneContext) -> torch.Tensor:
        """1 for the weights the prune keeps, 0 for the others (`removal_count` removes exactly
        the 0s): ``layer`` keeps each layer's k_l largest |W| of the trained weights — as many
        per layer as Z keeps — ``global`` keeps Z's support."""
        if self.support is None:
            raise RuntimeError("admm prunes after an ADMM state only (no Z support yet)")
        if ctx.config.admm_projection == "layer":
            scope = ctx.arena.hard_mask & ctx.structure.prunable
            segments = layer_segments(ctx.arena, ctx.structure.prunable_names, scope, ctx.state,
                                      ctx.config)
            return project_layers(ctx.arena.weight, scope, segments).to(torch.float32)
        return self.support.to(torch.float32)

    def removal_count(self, alive: int, total: int, config: RunConfig, state: int = -1) -> int:
        if self.support is None:
            raise RuntimeError("admm prunes after an ADMM state only (no Z support yet)")
        return alive - int(self.support.sum())

    # -- checkpoints -------------------------------------------------------------------------
    def state_tensors(self, arena: Arena) -> dict[str, torch.Tensor]:
        if self.dual is None or self.support is None:
            return {}
        return {"anchor": _canonical(arena, arena.anchor_buffer()),
                "dual": _canonical(arena, self.dual),
                "support": _canonical(arena, self.support.to(torch.uint8))}

    def load_state_tensors(self, arena: Arena, tensors: dict[str, torch.Tensor]) -> None:
        if not tensors:
            self.dual = self.support = None
            return
        _from_canonical(arena, arena.anchor_buffer(), tensors["anchor"])
        self.dual = torch.zeros_like(arena.weight)
        _from_canonical(arena, self.dual, tensors["dual"])
        support = torch.zeros_like(arena.code)
        _from_canonical(arena, support, tensors["support"])
        self.support = support.bool()
