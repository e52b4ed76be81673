"""A baseline that mimics the research code's per-step pruning work, for the bench only.

Per layer and per step it masks the gradient with ``torch.where`` over a float mask, makes the
host round trip of the penalty mask (``.cpu().numpy()``) the research pruner made, adds the
penalty, then calls ``optimizer.step()`` and re-applies the masks. Nothing in rsst uses it.
"""

from __future__ import annotations

import numpy as np
import torch

from rsst.arena import Arena
from rsst_kernels.masks import ALIVE, PENDING


class SeedStyleUpdate:
    """The research loop's update over an arena-backed model's parameters."""

    name = "seed"

    def __init__(self, arena: Arena, *, momentum: float = 0.9, weight_decay: float = 1e-4,
                 lam: float = 1e-2) -> None:
        self.params = list(arena.params)
        codes = [arena.view(n, "code") for n in arena.names]
        # the research code kept one float mask (and one penalty tensor) per layer
        self.masks = [((c & ALIVE) != 0).float() for c in codes]
        self.pending = [((c & PENDING) != 0).float() for c in codes]
        self.lam = lam
        self.optimizer = torch.optim.SGD(self.params, lr=0.0, momentum=momentum,
                                         weight_decay=weight_decay)

    def step(self, lr: float) -> None:
        for p, mask, pending in zip(self.params, self.masks, self.pending, strict=True):
            p.grad = torch.where(mask == 0, torch.zeros_like(p.grad), p.grad)
            reg = pending.cpu().numpy() * self.lam  # host round trip, as in the research pruner
            p.grad.add_(torch.from_numpy(np.ascontiguousarray(reg)).to(p.device) * p.data)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        with torch.no_grad():
            for p, mask in zip(self.params, self.masks, strict=True):
                p.mul_(mask)
