"""The ``eager`` backend: a per-parameter loop with ``torch.optim.SGD`` / ``AdamW``.

The oracle the other backends are checked against, and the bench's baseline: each gradient is
masked and penalised in place, the stock optimizer steps, dead weights and state are re-zeroed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rsst.update.config import UpdateConfig
from rsst.update.target import UpdateTarget, anchor_of
from rsst.update.twin import HostScalarsBackend
from rsst_kernels.masks import ALIVE, ANCHORED, PENDING


def _penalise(params: Sequence[torch.nn.Parameter], codes: Sequence[torch.Tensor], *,
              lam: float, block_loss_grad: bool, anchors: Sequence[torch.Tensor] | None = None,
              rho: float = 0.0) -> list[torch.Tensor]:
    """Mask and penalise each parameter's gradient in place (the RSST term, then ADMM's
    ρ·(w − a) on alive anchored elements when ``anchors`` and ``rho`` are given); returns the
    alive masks."""
    alive_masks = []
    admm = anchors is not None and rho != 0.0
    for i, (p, code) in enumerate(zip(params, codes, strict=True)):
        alive = (code & ALIVE) != 0
        pending = (code & PENDING) != 0
        grad = p.grad
        grad.masked_fill_(~alive, 0.0)
        penalty = p.detach() * lam
        grad.copy_(torch.where(pending, penalty if block_loss_grad else grad + penalty, grad))
        if admm:
            anchored = alive & ((code & ANCHORED) != 0)
            grad.add_(torch.where(anchored, p.detach() - anchors[i], 0.0), alpha=rho)
        alive_masks.append(alive)
    return alive_masks


def _remask(params: Sequence[torch.nn.Parameter], states: Sequence[Sequence[torch.Tensor]],
            alive_masks: Sequence[torch.Tensor]) -> None:
    """Zero dead weights and optimizer state, zero the gradients."""
    with torch.no_grad():
        for p, state, alive in zip(params, states, alive_masks, strict=True):
            p.masked_fill_(~alive, 0.0)
            for buffer in state:
                buffer.masked_fill_(~alive, 0.0)
            p.grad.zero_()


def eager_sgd_update(
    params: Sequence[torch.nn.Parameter],
    buffers: Sequence[torch.Tensor],
    codes: Sequence[torch.Tensor],
    optimizer: torch.optim.SGD,
    *,
    lr: float,
    lam: float,
    block_loss_grad: bool,
    first_step: bool,
    anchors: Sequence[torch.Tensor] | None = None,
    rho: float = 0.0,
) -> None:
    """Mask and penalise each gradient, ``optimizer.step()``, re-mask, zero the gradients.

    ``buffers`` are the momentum buffers the optimizer must use (seeded into its state, zeroed on
    the first step so that SGD's ``buf·μ + d`` equals its first-step ``buf ← d``). At μ = 0
    ``torch.optim.SGD`` keeps no buffer, so ``buf ← d`` is written here, as the other backends
    do (a checkpoint's momentum then does not depend on the backend). ``anchors`` (one per
    parameter) with ``rho`` add the ADMM term ρ·(w − a) to alive anchored elements.
    """
    settings = optimizer.param_groups[0]
    no_momentum = settings["momentum"] == 0
    alive_masks = _penalise(params, codes, lam=lam, block_loss_grad=block_loss_grad,
                            anchors=anchors, rho=rho)
    for p, buf in zip(params, buffers, strict=True):
        if no_momentum:
            with torch.no_grad():
                torch.add(p.grad, p, alpha=settings["weight_decay"], out=buf)  # d = g + wd·w
        elif first_step:
            buf.zero_()
        optimizer.state[p]["momentum_buffer"] = buf
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    _remask(params, [(buf,) for buf in buffers], alive_masks)


def eager_adamw_update(
    params: Sequence[torch.nn.Parameter],
    moments: Sequence[tuple[torch.Tensor, torch.Tensor]],
    codes: Sequence[torch.Tensor],
    optimizer: torch.optim.AdamW,
    *,
    lr: float,
    lam: float,
    block_loss_grad: bool,
    moment_step: int,
) -> None:
    """`eager_sgd_update` with ``torch.optim.AdamW``: its state is seeded with the given moments
    (updated in place by the single-tensor implementation) and step count ``moment_step − 1``."""
    alive_masks = _penalise(params, codes, lam=lam, block_loss_grad=block_loss_grad)
    for p, (m, v) in zip(params, moments, strict=True):
        optimizer.state[p].update(
            step=torch.tensor(float(moment_step - 1)), exp_avg=m, exp_avg_sq=v)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    _remask(params, moments, alive_masks)


def _sgd(params: list[torch.nn.Parameter], config: UpdateConfig) -> torch.optim.SGD:
    return torch.optim.SGD(
        params,
        lr=0.0,
        momentum=config.momentum,
        dampening=0.0,
        nesterov=config.nesterov and config.momentum != 0,  # at μ = 0 Nesterov is plain SGD
        weight_decay=config.weight_decay,
    )


def _adamw(params: list[torch.nn.Parameter], config: UpdateConfig) -> torch.optim.AdamW:
    # foreach=False: the single-tensor path updates the seeded state tensors in place
    return torch.optim.AdamW(params, lr=0.0, betas=(config.beta1, config.beta2), eps=config.eps,
                             weight_decay=config.weight_decay, foreach=False)


class EagerBackend(HostScalarsBackend):
    """Per-parameter loop with ``torch.optim.SGD`` / ``AdamW``: the oracle and bench baseline."""

    name = "eager"

    def __init__(self, config: UpdateConfig) -> None:
        super().__init__(config)
        self._arena: UpdateTarget | None = None
        self._optimizer: torch.optim.Optimizer | None = None

    @HostScalarsBackend.config.setter
    def config(self, config: UpdateConfig) -> None:
        self._config = config
        self._optimizer = None  # momentum, Nesterov, weight decay live in the optimizer

    def launch(self, arena: UpdateTarget) -> None:
        prepared = self.take_prepared()
        config = self._config
        if self._optimizer is None or self._arena is not arena:
            self._arena = arena
            params = list(arena.params)
            self._optimizer = _adamw(params, config) if config.adamw else _sgd(params, config)
            self._buffers = [arena.view(n, "momentum") for n in arena.names]
            self._codes = [arena.view(n, "code") for n in arena.names]
        if config.adamw:
            arena.ensure_second_moment()
            second = [arena.view(n, "second_moment") for n in arena.names]
            eager_adamw_update(arena.params, list(zip(self._buffers, second, strict=True)),
                               self._codes, self._optimizer, lr=prepared.lr, lam=prepared.lam,
                               block_loss_grad=config.block_loss_grad,
                               moment_step=prepared.moment_step)
            return
        anchor = anchor_of(arena, config.admm)
        eager_sgd_update(
            arena.params,
            self._buffers,
            self._codes,
            self._optimizer,
            lr=prepared.lr,
            lam=prepared.lam,
            block_loss_grad=config.block_loss_grad,
            first_step=prepared.first_step,
            anchors=None if anchor is None else [arena.view(n, "anchor") for n in arena.names],
            rho=config.rho,
        )


__all__ = ["EagerBackend", "eager_adamw_update", "eager_sgd_update"]
