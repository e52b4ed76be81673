"""The one dispatch: backend name → backend object → ``prepare`` + ``launch`` on a target.

Training calls ``Arena.step(make_backend(...), lr, t)``; the functional `step` wraps its flat
tensors in `FlatBuffers` and calls the same backend object, so both go through one path.
"""

from __future__ import annotations

import torch

from rsst.errors import UserError
from rsst.update.compiled import CompiledBackend
from rsst.update.config import BACKENDS, UpdateConfig, resolve_backend
from rsst.update.eager import EagerBackend
from rsst.update.target import FlatBuffers
from rsst.update.triton import TritonBackend
from rsst.update.twin import TorchBackend
from rsst_kernels import triton_available

Backend = TritonBackend | CompiledBackend | TorchBackend | EagerBackend

_BACKEND_CLASSES: dict[str, type[Backend]] = {
    "triton": TritonBackend, "compiled": CompiledBackend, "torch": TorchBackend,
    "eager": EagerBackend,
}


def make_backend(name: str, device: torch.device | str,
                 config: UpdateConfig | None = None) -> Backend:
    """The arena-level backend ``name`` (``auto`` resolved for ``device``)."""
    return _BACKEND_CLASSES[resolve_backend(name, device)](config or UpdateConfig())


def step(
    backend: str,
    w: torch.Tensor,
    g: torch.Tensor,
    buf: torch.Tensor,
    code: torch.Tensor,
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    block_loss_grad: bool = False,
    first_step: bool = False,
    schedule: str = "exp_custom_exponents",
    t: int = 0,
    T: int = 1,
    lam_max: float = 1.0,
    exponents: float = 4.0,
    optimizer: str = "sgd",
    exp_avg_sq: torch.Tensor | None = None,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    moment_step: int = 1,
    anchor: torch.Tensor | None = None,
    rho: float = 0.0,
) -> float:
    """One update on flat tensors, in place, with backend ``backend``; returns the λ used.

    ``w``, ``g``, ``buf``: 1-D float32 of one length; ``code``: 1-D uint8 (bit 0 alive, bit 1
    pending, bit 2 anchored). ``w`` and ``buf`` are updated, ``g`` is left zeroed for the next
    backward. With ``optimizer="adamw"``, ``buf`` is the first moment, ``exp_avg_sq`` the second
    (both updated), ``moment_step`` the 1-based step count of the bias corrections; ``momentum``,
    ``nesterov`` and ``first_step`` are SGD's and ignored. ``anchor`` (1-D float32, same length)
    with ``rho > 0`` adds the ADMM term ρ·(w − anchor) to the gradient of alive anchored
    elements, after the RSST penalty and before weight decay (SGD only); without an anchor
    ``rho`` must stay 0.
    """
    if rho != 0.0 and anchor is None:
        raise ValueError("rho > 0 needs an anchor (the ADMM term's a = Z − U)")
    config = UpdateConfig(
        momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
        block_loss_grad=block_loss_grad, schedule=schedule, ramp_steps=T, lam_max=lam_max,
        exponents=exponents, optimizer=optimizer, beta1=beta1, beta2=beta2, eps=eps,
        rho=rho if anchor is not None else 0.0,
    )
    if config.adamw:
        if exp_avg_sq is None:
            raise ValueError("optimizer='adamw' needs exp_avg_sq (the second moment)")
        if moment_step < 1:
            raise ValueError(f"moment_step counts from 1 (got {moment_step})")
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "triton" and not triton_available(w.device):
        raise UserError("the triton backend needs a CUDA device or TRITON_INTERPRET=1")
    target = FlatBuffers(w, g, buf, code, second_moment=exp_avg_sq if config.adamw else None,
                         anchor=anchor if config.admm else None, first_step=first_step,
                         moment_step=moment_step)
    return _BACKEND_CLASSES[backend](config).step(target, lr, t)


__all__ = ["Backend", "make_backend", "step"]
