"""Group importance (SPEC §3): ``remain``, ``magnitude`` from weights; ``l1``, ``l2``,
``saliency`` from each group's own activation over calibration batches.

The activation is the unit's own output: a conv's output channel (before its BN; summed over
the coupled convs of a ``--groups coupled`` set), a head's slice of the attention output
(``proj``'s input, read with a pre-hook, so timm's fused attention is covered), an MLP neuron's
post-activation ``fc1`` output (``fc2``'s input). Calibration runs with the weights masked by U,
and restores them afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from rsst.arena import Arena
from rsst.structure import Structure, Unit


def _scatter_sum(values: torch.Tensor, unit: Unit) -> torch.Tensor:
    out = torch.zeros(unit.num_groups, dtype=torch.float64, device=values.device)
    return out.index_add_(0, unit.weight_group, values.to(torch.float64))


def _per_group(unit: Unit, activation: torch.Tensor) -> torch.Tensor:
    """Reduce an activation (or product) to one number per group, in float64."""
    if unit.kind == "channel":  # [B, C, H, W] → [C]
        return activation.transpose(0, 1).reshape(unit.num_groups, -1).double()
    if unit.kind == "head":  # [B, N, H·d] → [H]
        flat = activation.reshape(-1, unit.num_groups, unit.head_dim)
        return flat.transpose(0, 1).reshape(unit.num_groups, -1).double()
    return activation.reshape(-1, unit.num_groups).transpose(0, 1).double()  # neurons


def _accumulate(acc: dict[str, torch.Tensor], unit: Unit, value: torch.Tensor) -> None:
    acc[unit.name] = acc.get(unit.name, 0) + value


def activation_scores(
    criteria: str,
    model: nn.Module,
    structure: Structure,
    arena: Arena,
    unstructured: torch.Tensor,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """``l1`` Σ|a|, ``l2`` √Σa², ``saliency`` Σ|a·∂L/∂a| per group, with weights masked by U.

    A coupled group (``--groups coupled``) sums over the output channel of every conv in it
    (each one's own output, before its BN): ``l1`` and ``saliency`` add the members' sums,
    ``l2`` is the norm of all members' activations together, √(Σ_members Σa²).
    """
    acc: dict[str, torch.Tensor] = {}
    hooks = []

    def capture(unit: Unit, a: torch.Tensor) -> None:
        if criteria == "l1":
            _accumulate(acc, unit, _per_group(unit, a.detach().abs()).sum(1))
        elif criteria == "l2":
            _accumulate(acc, unit, _per_group(unit, a.detach().double() ** 2).sum(1))
        elif a.requires_grad:  # saliency: needs ∂L/∂a from the backward pass
            a.register_hook(
                lambda grad, unit=unit, a=a.detach(): _accumulate(
                    acc, unit, _per_group(unit, (a * grad).abs()).sum(1))
            )

    for unit in structure.units:
        if unit.kind == "channel":
            for module in unit.activation_modules:
                hooks.append(module.register_forward_hook(
                    lambda _m, _i, out, unit=unit: capture(unit, out)))
        else:  # proj / fc2: the activation is the layer's input
            hooks.append(unit.module.register_forward_pre_hook(
                lambda _m, inputs, unit=unit: capture(unit, inputs[0])))

    saved = arena.weight.clone()
    was_training = model.training
    arena.weight.mul_(unstructured)
    model.eval()
    try:
        for x, y in batches:
            if criteria == "saliency":
                with torch.enable_grad():
                    loss = nn.functional.cross_entropy(model(x), y)
                    loss.backward()
            else:
                with torch.no_grad():
                    model(x)
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            arena.weight.copy_(saved)
        arena.zero_grad()
        model.train(was_training)
    if criteria == "l2":
        acc = {k: v.sqrt() for k, v in acc.items()}
    return {u.name: acc.get(u.name, torch.zeros(u.num_groups, dtype=torch.float64,
                                                    device=arena.device))
            for u in structure.units}


def group_scores(
    criteria: str,
    model: nn.Module,
    structure: Structure,
    arena: Arena,
    unstructured: torch.Tensor,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = (),
) -> dict[str, torch.Tensor]:
    """Score every group of every unit (float64 [C] per unit name).

    ``remain`` counts, ``magnitude`` sums |w| over the group's prunable weights, masked by U —
    for a coupled group over all its members' (every coupled conv's rows and every reading
    layer's columns in the prunable scope); the activation criteria: `activation_scores`.
    """
    if criteria == "remain":
        return {u.name: _scatter_sum(unstructured[u.weight_index], u) for u in structure.units}
    if criteria == "magnitude":
        masked = (arena.weight * unstructured).abs()
        return {u.name: _scatter_sum(masked[u.weight_index], u) for u in structure.units}
    return activation_scores(criteria, model, structure, arena, unstructured, batches)
