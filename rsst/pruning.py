"""Masks from weights (SPEC §2–§3): global magnitude pruning and the refill step. Never trains."""

from __future__ import annotations

import math

import torch

from rsst.structure import Structure, Unit


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


class _Decided:
    """Collects each unit's kept groups; an element several units share (a ViT embedding
    column inside a head's qkv rows) stays alive only when every unit holding it keeps it."""

    def __init__(self, structured: torch.Tensor) -> None:
        self.structured = structured
        self.alive = torch.ones_like(structured, dtype=torch.bool)
        self.covered = torch.zeros_like(structured, dtype=torch.bool)

    def keep(self, unit: Unit, kept: torch.Tensor) -> None:
        self.alive[unit.member_index] &= kept[unit.member_group].to(torch.bool)
        self.covered[unit.member_index] = True

    def apply(self) -> torch.Tensor:
        self.structured[self.covered] = self.alive[self.covered].to(self.structured.dtype)
        return self.structured


def refill(structure: Structure, unstructured: torch.Tensor, hard_mask: torch.Tensor,
           scores: dict[str, torch.Tensor], fillback_rate: float = 0.0,
           scope: str = "unit") -> torch.Tensor:
    """R: per unit keep the top-k alive groups by score, each whole; others dead (SPEC §3).

    Elements of prunable layers without groups, and everything outside the units, take U.
    Ties in score keep the lower group index. A group dead in H is never revived.
    ``scope="global"`` ranks the groups of each kind across all units instead (`refill_global`).
    """
    if scope == "global":
        return refill_global(structure, unstructured, hard_mask, scores, fillback_rate)
    if scope != "unit":
        raise ValueError(f"unknown refill scope {scope!r}")
    structured = unstructured.clone()
    decided = _Decided(structured)
    for unit in structure.units:
        in_u = unstructured[unit.weight_index]
        density = float(in_u.sum()) / unit.weight_index.numel()
        alive = structure.group_alive(unit, hard_mask)
        k = kept_groups(density, unit.num_groups, int(alive.sum()), fillback_rate)
        score = scores[unit.name].to(torch.float64).clone()
        score[~alive] = -math.inf
        order = torch.argsort(-score, stable=True)
        keep = torch.zeros(unit.num_groups, dtype=torch.bool, device=hard_mask.device)
        keep[order[:k]] = True
        keep &= alive
        decided.keep(unit, keep)
    return decided.apply()


def refill_global(structure: Structure, unstructured: torch.Tensor, hard_mask: torch.Tensor,
                  scores: dict[str, torch.Tensor], fillback_rate: float = 0.0) -> torch.Tensor:
    """R with one ranking per kind across all units (the research ``--sorting_mode global``).

    For each kind (channel, head, neuron) pooled over its units: ``d`` = fraction of their
    prunable weights alive in U, ``k = clamp(floor(d·C + (C − d·C)·f), 1, alive groups)`` with C
    all their groups, and the top-k alive groups by score are kept — except that every unit with
    an alive group keeps at least its best one (so no layer or block is emptied; k grows to the
    number of such units if smaller). Ties keep the earlier unit, then the lower group index.
    """
    decided = _Decided(unstructured.clone())
    for kind in structure.kinds:
        units = [u for u in structure.units if u.kind == kind]
        weights = sum(u.weight_index.numel() for u in units)
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
        for unit in units:
            kept = keep[start:start + unit.num_groups]
            decided.keep(unit, kept)
            start += unit.num_groups
    return decided.apply()


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
