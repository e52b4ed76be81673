"""The per-step scalars of the fused update: one small float32 tensor, one named slot each.

The kernel reads lr, t and the other per-step numbers from device memory (the ``hyper`` tensor)
rather than as launch arguments, so one compiled kernel serves every step and a captured CUDA
graph replays with new values. `ScalarSlot` names each position; `pack` puts values in that order.
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


#: Slot names in order (the short names of SPEC §4/§5: ``t`` is the step, ``T`` the window).
HYPER_SLOTS: tuple[str, ...] = (
    "lr", "momentum", "weight_decay", "lam_max", "exponents", "t", "T", "first_step", "rho"
)


def pack(*, lr: float, momentum: float, weight_decay: float, lam_max: float, exponents: float,
         t: int, T: int, first_step: bool, rho: float = 0.0) -> list[float]:
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
    return values


def unpack(values: list[float]) -> dict[str, float]:
    """Slot name (as in `HYPER_SLOTS`) → value, for code that reads ``hyper`` on the host."""
    return dict(zip(HYPER_SLOTS, values, strict=True))


__all__ = ["HYPER_SLOTS", "ScalarSlot", "pack", "unpack"]
