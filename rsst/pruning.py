"""Masks from weights (SPEC §2–§3): global magnitude pruning and the refill step. Never trains."""

from __future__ import annotations

import math

import torch

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


def refill(structure: Structure, unstructured: torch.Tensor, hard_mask: torch.Tensor,
           scores: dict[str, torch.Tensor], fillback_rate: float = 0.0) -> torch.Tensor:
    """R: per unit keep the top-k alive groups by score, each whole; others dead (SPEC §3).

    Elements of prunable layers without groups, and everything outside the units, take U.
    Ties in score keep the lower group index. A group dead in H is never revived.
    """
    structured = unstructured.clone()
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
        structured[unit.member_index] = keep[unit.member_group]
    return structured
