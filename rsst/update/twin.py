"""The ``torch`` backend: the kernels' torch twins (`fused_update_reference`,
`fused_adamw_reference`), a few vectorized ops over the flat buffers, no per-layer loop.

Also the base of the backends that take lr and λ as Python numbers (`HostScalarsBackend`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from rsst.arena import UpdateBackend
from rsst.update.config import UpdateConfig
from rsst.update.target import UpdateTarget, anchor_of, moments_of
from rsst_kernels import fused_update_reference
from rsst_kernels.fused_adamw import fused_adamw_reference


def twin_update(config: UpdateConfig, w: torch.Tensor, g: torch.Tensor,
                moments: Sequence[torch.Tensor], code: torch.Tensor, *, lr: float, lam: float,
                first_step: bool, moment_step: int, block_loss_grad: bool | None = None,
                anchor: torch.Tensor | None = None) -> None:
    """The torch twin of ``config.optimizer`` on flat buffers (``moments``: buf, or m and v;
    ``anchor``: ADMM's, SGD only)."""
    blg = config.block_loss_grad if block_loss_grad is None else block_loss_grad
    if config.adamw:
        m, v = moments
        fused_adamw_reference(w, g, m, v, code, lr=lr, lam=lam, beta1=config.beta1,
                              beta2=config.beta2, eps=config.eps,
                              weight_decay=config.weight_decay, step=moment_step,
                              block_loss_grad=blg)
    else:
        fused_update_reference(w, g, moments[0], code, lr=lr, lam=lam, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=config.nesterov,
                               block_loss_grad=blg, first_step=first_step, anchor=anchor,
                               rho=config.rho)


@dataclass(frozen=True)
class HostStep:
    """What `prepare` hands to `launch` in a backend whose update takes Python numbers."""

    lr: float
    lam: float
    first_step: bool
    moment_step: int = 1


class HostScalarsBackend(UpdateBackend):
    """A backend whose update takes lr and λ as Python numbers: `prepare` computes them and
    `launch` uses them (not capturable: a captured graph would freeze them)."""

    name: str
    capturable = False

    def __init__(self, config: UpdateConfig) -> None:
        self._config = config
        self._prepared: HostStep | None = None

    @property
    def config(self) -> UpdateConfig:
        return self._config

    @config.setter
    def config(self, config: UpdateConfig) -> None:
        self._config = config

    @property
    def switches(self) -> tuple[Hashable, ...]:
        return self._config.switches

    def prepare(self, arena: UpdateTarget, lr: float, t: int) -> float:
        lam = self._config.lam(t)
        self._prepared = HostStep(lr, lam, arena.fresh_momentum, arena.moment_steps + 1)
        return lam

    def take_prepared(self) -> HostStep:
        """The numbers of the last `prepare` (once: a second launch needs a second prepare)."""
        prepared, self._prepared = self._prepared, None
        if prepared is None:
            raise RuntimeError(f"{type(self).__name__}.launch needs a prepare() first")
        return prepared


class TorchBackend(HostScalarsBackend):
    """The kernel's torch twin over the whole arena: a few vectorized ops, no per-layer loop."""

    name = "torch"

    def launch(self, arena: UpdateTarget) -> None:
        config, prepared = self._config, self.take_prepared()
        # with nothing pending the penalty terms are no-ops: skip reading the pending bits
        twin_update(config, arena.weight, arena.grad, moments_of(arena, config.adamw),
                    arena.code, lr=prepared.lr, lam=prepared.lam if arena.has_pending else 0.0,
                    first_step=prepared.first_step, moment_step=prepared.moment_step,
                    block_loss_grad=config.block_loss_grad and arena.has_pending,
                    anchor=anchor_of(arena, config.admm))


__all__ = ["HostScalarsBackend", "HostStep", "TorchBackend", "twin_update"]
