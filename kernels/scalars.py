"""The per-step scalars of the fused updates: one small float32 tensor, one named slot each.

The kernels read lr, t and the other per-step numbers from device memory (the ``hyper`` tensor)
rather than as launch arguments, so one compiled kernel serves every step and a captured CUDA
graph replays with new values. `ScalarSlot` names each position; `pack` puts values in that order.
The SGD kernel reads the first eight slots (and ``rho`` with the ADMM term on); the AdamW kernel
reads the shared ones (lr, weight decay, the λ schedule's) and its own (betas, eps, the bias
corrections of this step).

The compiled CPU pass also takes its compile-time switches (schedule, Nesterov, block_loss_grad)
as a tensor (`SwitchSlot`), so that one compiled function serves every combination.
"""

from __future__ import annotations

from enum import IntEnum


class ScalarSlot(IntEnum):
    """Position of each per-step scalar in the ``hyper`` tensor."""

    LR = 0
    MOMENTUM = 1
    WEIGHT_DECAY = 2
    LAM_MAX = 3  # λ_max of the schedule (SPEC §4)
    EXPONENTS = 4  # p of exp_custom_exponents
    STEP = 5  # t: step index inside the ramp window
    WINDOW = 6  # T: ramp window length in steps
    FIRST_STEP = 7  # 1.0 on the first step of a state (buf ← d), else 0.0
    RHO = 8  # ρ of the ADMM penalty ρ/2·‖w − a‖² (read only with the ADMM switch on)
    BETA1 = 9  # AdamW: decay of the first moment
    BETA2 = 10  # AdamW: decay of the second moment
    EPS = 11  # AdamW: added to the denominator
    BIAS_CORRECTION1 = 12  # AdamW: 1 − β1^k, k = steps since the moments were reset
    BIAS_CORRECTION2_SQRT = 13  # AdamW: √(1 − β2^k)


#: Slot names in order (the short names of SPEC §4/§5: ``t`` is the step, ``T`` the window).
HYPER_SLOTS: tuple[str, ...] = (
    "lr", "momentum", "weight_decay", "lam_max", "exponents", "t", "T", "first_step", "rho",
    "beta1", "beta2", "eps", "bias_correction1", "bias_correction2_sqrt",
)


class SwitchSlot(IntEnum):
    """Position of each switch in the compiled pass's ``switches`` tensor (Triton: constexprs)."""

    SCHEDULE = 0  # the schedule's integer code (`schedules.SCHEDULES`)
    NESTEROV = 1  # 1.0: Nesterov momentum (SGD)
    BLOCK_LOSS_GRAD = 2  # 1.0: pending elements take the penalty gradient alone


def pack(*, lr: float, momentum: float, weight_decay: float, lam_max: float, exponents: float,
         t: int, T: int, first_step: bool, rho: float = 0.0, beta1: float = 0.0,
         beta2: float = 0.0, eps: float = 0.0, bias_correction1: float = 1.0,
         bias_correction2_sqrt: float = 1.0) -> list[float]:
    """The values of one step, in slot order (what the ``hyper`` tensor holds)."""
    values = [0.0] * len(ScalarSlot)
    values[ScalarSlot.LR] = lr
    values[ScalarSlot.MOMENTUM] = momentum
    values[ScalarSlot.WEIGHT_DECAY] = weight_decay
    values[ScalarSlot.LAM_MAX] = lam_max
    values[ScalarSlot.EXPONENTS] = exponents
    values[ScalarSlot.STEP] = float(t)
    values[ScalarSlot.WINDOW] = float(T)
    values[ScalarSlot.FIRST_STEP] = 1.0 if first_step else 0.0
    values[ScalarSlot.RHO] = rho
    values[ScalarSlot.BETA1] = beta1
    values[ScalarSlot.BETA2] = beta2
    values[ScalarSlot.EPS] = eps
    values[ScalarSlot.BIAS_CORRECTION1] = bias_correction1
    values[ScalarSlot.BIAS_CORRECTION2_SQRT] = bias_correction2_sqrt
    return values


def pack_switches(*, schedule: int, nesterov: bool, block_loss_grad: bool) -> list[float]:
    """The switches of a launch, in `SwitchSlot` order."""
    values = [0.0] * len(SwitchSlot)
    values[SwitchSlot.SCHEDULE] = float(schedule)
    values[SwitchSlot.NESTEROV] = 1.0 if nesterov else 0.0
    values[SwitchSlot.BLOCK_LOSS_GRAD] = 1.0 if block_loss_grad else 0.0
    return values


def unpack(values: list[float]) -> dict[str, float]:
    """Slot name (as in `HYPER_SLOTS`) → value, for code that reads ``hyper`` on the host.

    A shorter list (the SGD slots alone) is accepted: the names are matched in order.
    """
    if len(values) > len(HYPER_SLOTS):
        raise ValueError(f"{len(values)} values for {len(HYPER_SLOTS)} slots")
    return dict(zip(HYPER_SLOTS, values, strict=False))


__all__ = ["HYPER_SLOTS", "ScalarSlot", "SwitchSlot", "pack", "pack_switches", "unpack"]
