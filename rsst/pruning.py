"""Masks from weights (SPEC §2–§3): global magnitude pruning and the refill step. Never trains."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from rsst.structure import Structure


def prune_lowest(scores: torch.Tensor, hard_mask: torch.Tensor, prunable: torch.Tensor,
                 count: int) -> torch.Tensor:
    """U: remove the ``count`` alive prunable elements of lowest score, jointly ranked.

    Elements outside the prunable scope keep their ``hard_mask`` value; ``count`` is capped at
    the number of alive prunable elements. Ties break by lower flat index (stable sort), so the
    result is deterministic.
    """
    candidates = hard_mask & prunable
    unstructured = hard_mask.clone()
    count = min(count, int(candidates.sum()))
    if count <= 0:
        return unstructured
    ranked = torch.where(candidates, scores, torch.full_like(scores, math.inf))
    order = torch.argsort(ranked, stable=True)
    unstructured[order[:count]] = False
    return unstructured


def magnitude_prune(weight: torch.Tensor, hard_mask: torch.Tensor, prunable: torch.Tensor,
                    rate: float) -> torch.Tensor:
    """U: remove ``round(rate · alive)`` alive prunable weights of smallest |w|, jointly ranked."""
    alive = int((hard_mask & prunable).sum())
    return prune_lowest(weight.abs(), hard_mask, prunable, int(round(rate * alive)))


def kept_groups(density: float, num_groups: int, alive_groups: int, fillback_rate: float) -> int:
    """k = clamp(floor(d·C + (C − d·C)·f), 1, alive) of SPEC §3."""
    filled = density * num_groups
    k = math.floor(filled + (num_groups - filled) * fillback_rate + 1e-9)
    return max(1, min(k, alive_groups))


def round_kept(k: int, alive_groups: int, round_to: int) -> int:
    """``k`` rounded up to a multiple of ``round_to``, at most ``alive_groups``.

    Up, as Torch-Pruning's ``round_to`` does, so a unit is never emptied and never pruned more
    than its density asks; when the next multiple exceeds the alive groups they all stay (a
    unit whose width is not a multiple keeps its width until it is pruned once).
    """
    if round_to <= 1:
        return k
    return min(-(-k // round_to) * round_to, alive_groups)


def _apply_groups(unstructured: torch.Tensor, structure: Structure,
                  kept: list[torch.Tensor]) -> torch.Tensor:
    """Every element of a unit's groups alive iff all groups it belongs to are kept.

    Coupled units share elements with per-layer ones (a conv's rows in its own unit, its input
    columns in the coupled unit it reads), so a dead group is never revived by another unit;
    without sharing this equals writing each unit's ``keep`` onto its members.
    """
    covered = torch.zeros_like(unstructured)
    dead = torch.zeros_like(unstructured)
    for unit, keep in zip(structure.units, kept, strict=True):
        covered[unit.member_index] = True
        dead[unit.member_index[~keep[unit.member_group]]] = True
    return torch.where(covered, ~dead, unstructured)


def _killed_elsewhere(structure: Structure, hard_mask: torch.Tensor) -> list[int]:
    """Per unit: how many of its prunable weights are dead in H through another unit's dead
    group (coupled units share weights with per-layer ones: a dead stream channel kills the
    column its reader's unit also holds).

    Refill's density leaves them out, so ``d`` measures the unit's own pruning and a refill of
    an unchanged U keeps every alive group; without sharing (per-layer groups, heads and
    neurons) every count is 0 and ``d`` is §3's.
    """
    dead_of = [~structure.group_alive(u, hard_mask) for u in structure.units]
    killers = torch.zeros(hard_mask.numel(), dtype=torch.int32, device=hard_mask.device)
    for unit, dead in zip(structure.units, dead_of, strict=True):
        killers[unit.weight_index[dead[unit.weight_group]]] += 1
    counts = []
    for unit, dead in zip(structure.units, dead_of, strict=True):
        others = killers[unit.weight_index] - dead[unit.weight_group].int()
        counts.append(int((others > 0).sum()))
    return counts


def _top(score: torch.Tensor, alive: torch.Tensor, k: int) -> torch.Tensor:
    """Bool [C]: the ``k`` alive groups of highest score (ties: lower index)."""
    score = score.to(torch.float64).clone()
    score[~alive] = -math.inf
    keep = torch.zeros_like(alive)
    keep[torch.argsort(-score, stable=True)[:k]] = True
    return keep & alive


def refill(structure: Structure, unstructured: torch.Tensor, hard_mask: torch.Tensor,
           scores: dict[str, torch.Tensor], fillback_rate: float = 0.0,
           scope: str = "unit", round_to: int = 1) -> torch.Tensor:
    """R: per unit keep the top-k alive groups by score, each whole; others dead (SPEC §3).

    ``d`` leaves out the unit's weights killed by another unit's dead group
    (`_killed_elsewhere`, coupled and embed groups only). Elements of prunable layers without
    groups, and everything outside the units, take U.
    Ties in score keep the lower group index. A group dead in H is never revived; an element in
    several units' groups lives only when all of them are kept (`_apply_groups`). ``round_to``
    rounds each unit's k up to a multiple (`round_kept`). ``scope="global"`` ranks the groups
    of each kind across all units instead (`refill_global`).
    """
    if scope == "global":
        return refill_global(structure, unstructured, hard_mask, scores, fillback_rate,
                             round_to)
    if scope != "unit":
        raise ValueError(f"unknown refill scope {scope!r}")
    kept = []
    for unit, elsewhere in zip(structure.units, _killed_elsewhere(structure, hard_mask),
                               strict=True):
        in_u = unstructured[unit.weight_index]
        density = float(in_u.sum()) / (unit.weight_index.numel() - elsewhere)
        alive = structure.group_alive(unit, hard_mask)
        n_alive = int(alive.sum())
        k = round_kept(kept_groups(density, unit.num_groups, n_alive, fillback_rate), n_alive,
                       round_to)
        kept.append(_top(scores[unit.name], alive, k))
    return _apply_groups(unstructured, structure, kept)


def refill_global(structure: Structure, unstructured: torch.Tensor, hard_mask: torch.Tensor,
                  scores: dict[str, torch.Tensor], fillback_rate: float = 0.0,
                  round_to: int = 1) -> torch.Tensor:
    """R with one ranking per kind across all units (the research ``--sorting_mode global``).

    For each kind (channel, head, neuron) pooled over its units: ``d`` = fraction of their
    prunable weights alive in U, ``k = clamp(floor(d·C + (C − d·C)·f), 1, alive groups)`` with C
    all their groups, and the top-k alive groups by score are kept — except that every unit with
    an alive group keeps at least its best one (so no layer or block is emptied; k grows to the
    number of such units if smaller). Ties keep the earlier unit, then the lower group index.
    ``round_to`` then rounds each unit's kept count up to a multiple (`round_kept`), its best
    groups by score.
    """
    kept_of: dict[int, torch.Tensor] = {}
    elsewhere = dict(zip(map(id, structure.units), _killed_elsewhere(structure, hard_mask),
                         strict=True))
    for kind in structure.kinds:
        units = [u for u in structure.units if u.kind == kind]
        weights = sum(u.weight_index.numel() - elsewhere[id(u)] for u in units)
        density = sum(float(unstructured[u.weight_index].sum()) for u in units) / weights
        alive = [structure.group_alive(u, hard_mask) for u in units]
        total = sum(u.num_groups for u in units)
        k = kept_groups(density, total, sum(int(a.sum()) for a in alive), fillback_rate)
        ranked = []
        reserved = []
        for unit, live in zip(units, alive, strict=True):
            score = scores[unit.name].to(torch.float64).clone()
            score[~live] = -math.inf
            best = torch.zeros_like(live)
            if bool(live.any()):
                best[torch.argsort(-score, stable=True)[0]] = True
            ranked.append(score.masked_fill(best, math.inf))  # the reserved ones rank first
            reserved.append(best)
        flat = torch.cat(ranked)
        k = max(k, int(torch.cat(reserved).sum()))
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[torch.argsort(-flat, stable=True)[:k]] = True
        keep &= torch.cat(alive)
        start = 0
        for unit, live in zip(units, alive, strict=True):
            kept = keep[start:start + unit.num_groups]
            if round_to > 1:
                n = round_kept(int(kept.sum()), int(live.sum()), round_to)
                kept = _top(scores[unit.name], live, n)
            kept_of[id(unit)] = kept
            start += unit.num_groups
    return _apply_groups(unstructured, structure, [kept_of[id(u)] for u in structure.units])


# -- budgets (--target-macs / --target-params) ----------------------------------------------------
def budget_count(cost_of: Callable[[int], float], target: float, high: int) -> int:
    """The fewest removals ``n`` in [0, high] with ``cost_of(n) <= target``, by bisection.

    ``cost_of`` must fall (not strictly) as ``n`` grows, as the compacted cost of a prune of
    ``n`` weights does. Returns ``high`` when even that misses the budget (the caller says so).
    Then ``n - 1`` removals miss it: the result lands at or under ``target`` by less than what
    one more removal (at most one group, after refill) takes away.
    """
    if cost_of(0) <= target:
        return 0
    lo, hi = 0, high  # cost_of(lo) > target; hi: the candidate
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cost_of(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def masked_cost(model: nn.Module, weight: torch.Tensor, mask: torch.Tensor,
                input_size: tuple[int, ...], budget: str) -> float:
    """The compacted ``macs`` or ``params`` of ``model`` with its arena weights ``weight``
    masked by ``mask``, relative to dense — what `rsst.compact.compact_cost` reports for the
    delivered network. The live weights are restored afterwards."""
    from rsst.compact import compact_cost

    if budget not in ("macs", "params"):
        raise ValueError(f"unknown budget {budget!r}: macs or params")
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(mask)
        cost = compact_cost(copy.deepcopy(model), input_size)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    return cost[f"{budget}_ratio"]


def prune_to_budget(
    structure: Structure, hard_mask: torch.Tensor, element_scores: torch.Tensor,
    group_scores_of: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    cost: Callable[[torch.Tensor], float], target: float, *, fillback_rate: float = 0.0,
    scope: str = "unit", round_to: int = 1,
) -> tuple[torch.Tensor, float]:
    """The mask of the smallest prune (lowest ``element_scores`` first, refilled into whole
    groups when the structure has units) whose ``cost`` is at most ``target``, and that cost.

    ``group_scores_of(U)`` scores the groups for a candidate U (the run's criterion);
    ``cost(mask)`` is e.g. `masked_cost` of the compacted MACs. A one-shot method calls this
    once from dense; an iterative method calls it for the state whose regular prune would
    undershoot the budget. The cost may stay above ``target`` when every unit is down to its
    last group: the caller reports that the budget cannot be met.
    """
    prunable = structure.prunable

    def mask_at(n: int) -> torch.Tensor:
        unstructured = prune_lowest(element_scores, hard_mask, prunable, n)
        if not structure.units:
            return unstructured
        return refill(structure, unstructured, hard_mask, group_scores_of(unstructured),
                      fillback_rate, scope, round_to)

    costs: dict[int, float] = {}

    def cost_of(n: int) -> float:
        if n not in costs:
            costs[n] = cost(mask_at(n))
        return costs[n]

    n = budget_count(cost_of, target, int((hard_mask & prunable).sum()))
    return mask_at(n), cost_of(n)


#: `fade_ratio` above which an RSST cut removes weights the network still uses (warned; the
#: ``--fade-epochs`` mode trains on until the ratio is below it)
FADE_THRESHOLD = 0.1


def fade_ratio(weight: torch.Tensor, hard_mask: torch.Tensor, pending: torch.Tensor,
               prunable: torch.Tensor) -> float | None:
    """rms of the pending prunable weights / rms of the live ones (alive, not pending, prunable).

    How far the RSST penalty faded what the cut is about to remove, relative to what stays:
    ≈ 1 means the cut is as abrupt as Refill's. None when either set is empty or the live
    weights are all zero.
    """
    faded = pending & prunable
    live = hard_mask & ~pending & prunable
    if not bool(faded.any()) or not bool(live.any()):
        return None
    live_rms = float(weight[live].double().pow(2).mean().sqrt())
    if live_rms == 0.0:
        return None
    return float(weight[faded].double().pow(2).mean().sqrt()) / live_rms
