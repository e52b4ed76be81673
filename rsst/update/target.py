"""What a backend updates: the flat buffers of an `Arena`, or of the functional `step`.

Every backend reads the same handful of arena attributes (`UpdateTarget`). `FlatBuffers` gives
plain 1-D tensors those attributes — one "parameter" spanning them all — so the functional
`step` runs each backend's own ``prepare``/``launch``, the path training takes, instead of a
second dispatch of its own.
"""

from __future__ import annotations

from typing import Protocol

import torch


class UpdateTarget(Protocol):
    """The part of `rsst.arena.Arena` the update backends read and write."""

    device: torch.device
    weight: torch.Tensor
    grad: torch.Tensor
    momentum: torch.Tensor
    code: torch.Tensor
    scalars: torch.Tensor
    anchor: torch.Tensor | None
    fresh_momentum: bool
    has_pending: bool
    moment_steps: int
    params: list[torch.nn.Parameter]
    names: list[str]

    def view(self, name: str, buffer: str = "weight") -> torch.Tensor: ...

    def ensure_second_moment(self) -> torch.Tensor: ...

    def write_scalars(self, values: list[float]) -> None: ...


class FlatBuffers:
    """Caller-owned 1-D buffers dressed as a one-parameter arena (updated in place).

    ``has_pending`` stays True: the caller's code bits are not scanned, so the penalty terms
    always run (with nothing pending they add nothing).
    """

    names = ["flat"]
    has_pending = True

    def __init__(self, w: torch.Tensor, g: torch.Tensor, buf: torch.Tensor, code: torch.Tensor,
                 *, second_moment: torch.Tensor | None, anchor: torch.Tensor | None,
                 first_step: bool, moment_step: int) -> None:
        self.device = w.device
        self.weight, self.grad, self.momentum, self.code = w, g, buf, code
        self.second_moment = second_moment
        self.anchor = anchor
        self.fresh_momentum = first_step
        self.moment_steps = moment_step - 1
        self.scalars = torch.empty(0)
        param = torch.nn.Parameter(w)  # shares w's storage: the optimizer steps w itself
        param.grad = g
        self.params = [param]

    def view(self, name: str, buffer: str = "weight") -> torch.Tensor:
        """The whole buffer (the one "parameter" spans it)."""
        return getattr(self, buffer)

    def ensure_second_moment(self) -> torch.Tensor:
        if self.second_moment is None:
            raise ValueError("optimizer='adamw' needs exp_avg_sq (the second moment)")
        return self.second_moment

    def write_scalars(self, values: list[float]) -> None:
        self.scalars = torch.tensor(values, dtype=torch.float32).to(self.device)


def anchor_of(target: UpdateTarget, admm: bool) -> torch.Tensor | None:
    """The target's ADMM anchor when the term is on (None when off)."""
    if not admm:
        return None
    if target.anchor is None:
        raise RuntimeError("the update's ADMM term is on (rho > 0) but the arena has no anchor: "
                           "Arena.set_anchored allocates it")
    return target.anchor


def moments_of(target: UpdateTarget, adamw: bool) -> tuple[torch.Tensor, ...]:
    """The optimizer state buffers of the target: (momentum,), or AdamW's (m, v)."""
    if adamw:
        return (target.momentum, target.ensure_second_moment())
    return (target.momentum,)


__all__ = ["FlatBuffers", "UpdateTarget", "anchor_of", "moments_of"]
