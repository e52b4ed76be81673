"""Random structured pruning, for benchmarks and tests."""

from __future__ import annotations

import torch
from torch import nn


def random_prune(model: nn.Module, fraction: float, *, seed: int = 0,
                 structure: str = "auto", groups: str = "per-layer") -> dict[str, torch.Tensor]:
    """Kill ``fraction`` of the groups of every unit at random, the way Refill's hard mask does
    (weights, biases and BN γ/β of a dead group zeroed), and return the masks
    (``<param> -> uint8``, every prunable weight, the layout of a run's state file).

    Uses the run's own `Arena`/`build_structure`, so the zeroed elements are exactly the groups
    a real run would zero (``groups="coupled"``: whole coupled sets, with the columns reading
    them). The model's parameters become views into the arena's buffer.
    """
    from rsst.arena import Arena
    from rsst.structure import build_structure

    arena = Arena(model)
    struct = build_structure(model, arena, structure, groups=groups)
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(arena.numel, dtype=torch.bool, device=arena.device)
    for unit in struct.units:
        dead = torch.randperm(unit.num_groups, generator=gen)[: int(fraction * unit.num_groups)]
        kill = torch.zeros(unit.num_groups, dtype=torch.bool)
        kill[dead] = True
        kill = kill.to(arena.device)
        mask[unit.member_index[kill[unit.member_group]]] = False
    arena.set_masks(mask)  # padding is dropped by set_masks
    return {name: (arena.view(name, "code") & 1).clone() for name in struct.prunable_names}
