"""λ schedules of the RSST penalty (SPEC §4) by name: rsst's front end to the kernel's formulas.

The closed forms, the schedule names and their integer codes live in `rsst_kernels.schedules`
(the fused kernel computes the same forms in-kernel; tests hold the two equal). This module adds
what a user meets: names instead of codes, and a `UserError` naming the valid schedules.
"""

from __future__ import annotations

from rsst.errors import UserError
from rsst_kernels.schedules import SCHEDULES, lam_of_code, ramp_position


def schedule_code(schedule: str) -> int:
    """Integer code of ``schedule`` for the kernel; a `UserError` names the valid ones."""
    try:
        return SCHEDULES.index(schedule)
    except ValueError:
        raise UserError(
            f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)} (--schedule)"
        ) from None


def lam(schedule: str, u: float, lam_max: float = 1.0, exponents: float = 4.0) -> float:
    """λ(u) of SPEC §4 for ``u`` in (0, 1]."""
    return lam_of_code(schedule_code(schedule), u, lam_max, exponents)


def lam_at(
    schedule: str, t: int, T: int, lam_max: float = 1.0, exponents: float = 4.0
) -> float:
    """λ at step ``t`` of a ramp window of ``T`` steps."""
    return lam(schedule, ramp_position(t, T), lam_max, exponents)


def ramp_steps(reg_ramp: str, steps_per_epoch: int, epochs: int) -> int:
    """Steps of one λ ramp window: the whole state (``--reg-ramp state``) or one epoch."""
    return steps_per_epoch * epochs if reg_ramp == "state" else steps_per_epoch


def ramp_offset(reg_ramp: str, epoch: int, steps_per_epoch: int) -> int:
    """Position in the ramp window of an epoch's first step (0-based epoch): the ramp runs on
    through the state's epochs under ``--reg-ramp state`` and restarts every epoch otherwise."""
    return epoch * steps_per_epoch if reg_ramp == "state" else 0


def fade_lambda(reg_granularity: float, k: int, peak_lr: float) -> float:
    """λ of fade epoch ``k`` (1, 2, …, ``--fade-epochs``): GReg's growing penalty
    ``reg_granularity · 2^k``, capped at ``1 / peak_lr`` so that one step's penalty never
    overshoots zero (lr·λ ≤ 1: stable with momentum)."""
    return min(reg_granularity * 2.0 ** k, 1.0 / peak_lr)


__all__ = ["SCHEDULES", "fade_lambda", "lam", "lam_at", "ramp_offset", "ramp_position",
           "ramp_steps", "schedule_code"]
