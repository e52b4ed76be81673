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


__all__ = ["SCHEDULES", "lam", "lam_at", "ramp_position", "schedule_code"]
