"""What an update computes: `UpdateConfig`, the backend names and how ``auto`` picks one."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import torch

from rsst.choices import OPTIMIZERS, UPDATE_BACKENDS
from rsst.errors import UserError
from rsst.schedules import lam_at, schedule_code
from rsst_kernels import triton_available
from rsst_kernels.fused_adamw import adamw_bias_corrections
from rsst_kernels.scalars import pack, pack_switches

BACKENDS = UPDATE_BACKENDS  # the lists live in rsst.choices, where the CLI reads them


@dataclass(frozen=True)
class UpdateConfig:
    """Hyper-parameters of the update that stay fixed over a ramp window."""

    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    block_loss_grad: bool = False
    schedule: str = "exp_custom_exponents"
    ramp_steps: int = 1
    lam_max: float = 1.0
    exponents: float = 4.0
    optimizer: str = "sgd"  # sgd | adamw (momentum and nesterov are SGD's, betas and eps AdamW's)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    #: ρ of the ADMM penalty ρ/2‖w − a‖² on anchored elements; 0 switches the term off
    rho: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}: choose one of "
                            f"{', '.join(OPTIMIZERS)} (--optimizer)")
        if self.adamw and self.admm:
            raise UserError("the ADMM term (rho > 0) is a term of the SGD update: use "
                            "--optimizer sgd with --method admm")

    @property
    def adamw(self) -> bool:
        return self.optimizer == "adamw"

    @property
    def admm(self) -> bool:
        """Whether the update adds the ADMM term (and reads the anchor buffer)."""
        return self.rho != 0.0

    def lam(self, t: int) -> float:
        return lam_at(self.schedule, t, self.ramp_steps, self.lam_max, self.exponents)

    def scalars(self, lr: float, t: int, first_step: bool, moment_step: int = 1) -> list[float]:
        """Values for the kernel's ``hyper`` tensor, in the order of its `ScalarSlot`.

        ``moment_step``: k, the 1-based step count since the moments were reset (AdamW's bias
        corrections, computed here in float64 like ``torch.optim.AdamW`` does).
        """
        bc1, bc2_sqrt = (adamw_bias_corrections(self.beta1, self.beta2, moment_step)
                         if self.adamw else (1.0, 1.0))
        return pack(lr=lr, momentum=self.momentum, weight_decay=self.weight_decay,
                    lam_max=self.lam_max, exponents=self.exponents, t=t, T=self.ramp_steps,
                    first_step=first_step, rho=self.rho, beta1=self.beta1, beta2=self.beta2,
                    eps=self.eps, bias_correction1=bc1, bias_correction2_sqrt=bc2_sqrt)

    def switch_values(self) -> list[float]:
        """The switches as the compiled pass's ``switches`` tensor holds them (`SwitchSlot`)."""
        return pack_switches(schedule=schedule_code(self.schedule), nesterov=self.nesterov,
                             block_loss_grad=self.block_loss_grad)

    @property
    def switches(self) -> tuple[Hashable, ...]:
        """The values a kernel launch takes as compile-time constants."""
        return (self.optimizer, self.schedule, self.nesterov, self.block_loss_grad, self.admm)


def resolve_backend(name: str, device: torch.device | str) -> str:
    """``auto`` → ``triton`` on CUDA (when Triton is there), else ``compiled``; validates names.

    ``compiled`` is the fastest CPU path the update suite measured (bench/RESULTS.md); where it
    cannot compile it falls back to the ``torch`` twin by itself, with a warning.
    """
    if name == "auto":
        on_gpu = torch.device(device).type == "cuda" and triton_available(device)
        return "triton" if on_gpu else "compiled"
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}: choose auto, {', '.join(BACKENDS)} (--backend)")
    if name == "triton" and not triton_available(device):
        raise UserError(
            f"the triton backend needs a CUDA device (this run is on {device}); "
            "use --backend torch or auto"
        )
    return name


__all__ = ["BACKENDS", "OPTIMIZERS", "UpdateConfig", "resolve_backend"]
