"""The ``triton`` backend: `rsst_kernels.fused_update` / `fused_adamw`, one launch per step."""

from __future__ import annotations

from collections.abc import Hashable

import torch

from rsst.arena import UpdateBackend
from rsst.schedules import schedule_code
from rsst.update.config import UpdateConfig
from rsst.update.target import UpdateTarget, anchor_of
from rsst_kernels import fused_update
from rsst_kernels.fused_adamw import fused_adamw


class TritonBackend(UpdateBackend):
    """The fused kernel over the whole arena: one launch per step, scalars in a device tensor.

    `prepare` writes this step's scalars (lr, t, first step, AdamW's bias corrections) into
    ``arena.scalars`` from the host, `launch` runs the kernel, which reads only device memory — so
    `launch` can be captured in a CUDA graph and replayed after each `prepare`. Under
    ``torch.compile`` the SGD update goes through the custom op ``torch.ops.rsst.fused_update``
    so a compiled step does not graph-break on the launcher.
    """

    name = "triton"
    capturable = True

    def __init__(self, config: UpdateConfig) -> None:
        self.config = config

    @property
    def switches(self) -> tuple[Hashable, ...]:
        return self.config.switches

    def prepare(self, arena: UpdateTarget, lr: float, t: int) -> float:
        """Write this step's scalars into ``arena.scalars`` (no host sync); returns λ(t)."""
        config = self.config
        if config.adamw:
            arena.ensure_second_moment()
        arena.write_scalars(config.scalars(lr, t, arena.fresh_momentum, arena.moment_steps + 1))
        return config.lam(t)

    def launch(self, arena: UpdateTarget) -> None:
        """The kernel over the whole arena with the scalars `prepare` wrote."""
        config = self.config
        code = schedule_code(config.schedule)
        if config.adamw:
            fused_adamw(arena.weight, arena.grad, arena.momentum, arena.ensure_second_moment(),
                        arena.code, arena.scalars, schedule=code,
                        block_loss_grad=config.block_loss_grad)
            return
        args = (arena.weight, arena.grad, arena.momentum, arena.code, arena.scalars)
        anchor = anchor_of(arena, config.admm)
        if torch.compiler.is_compiling():
            torch.ops.rsst.fused_update(*args, code, config.nesterov, config.block_loss_grad,
                                        anchor)
            return
        fused_update(*args, schedule=code, nesterov=config.nesterov,
                     block_loss_grad=config.block_loss_grad, anchor=anchor)


__all__ = ["TritonBackend"]
