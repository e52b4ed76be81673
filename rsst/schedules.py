"""λ schedules of the RSST penalty (SPEC §4): the one place the formulas live in Python.

Every schedule is a pure function of the ramp position ``u = (t + 1) / T`` in (0, 1], rising from
about 0 to exactly ``lam_max`` at ``u = 1``. The fused Triton kernel computes the same formulas
in-kernel (``rsst_kernels.fused_update``); tests hold the two equal.
"""

from __future__ import annotations

import math

from rsst.errors import UserError

#: Schedule names, in the order of the integer codes the kernel uses.
SCHEDULES: tuple[str, ...] = ("x", "x^2", "x^3", "exp", "exp_custom_exponents")

_E_MINUS_1 = math.e - 1.0


def schedule_code(schedule: str) -> int:
    """Integer code of ``schedule`` for the kernel; a `UserError` names the valid ones."""
    try:
        return SCHEDULES.index(schedule)
    except ValueError:
        raise UserError(
            f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)} (--schedule)"
        ) from None


def ramp_position(t: int, T: int) -> float:
    """``u = (t + 1) / T``: step ``t`` (0-based) of a window of ``T`` steps, clamped to 1."""
    return min((t + 1) / max(T, 1), 1.0)


def lam(schedule: str, u: float, lam_max: float = 1.0, exponents: float = 4.0) -> float:
    """λ(u) of SPEC §4 for ``u`` in (0, 1]."""
    code = schedule_code(schedule)
    if code == 0:
        shape = u
    elif code == 1:
        shape = u * u
    elif code == 2:
        shape = u * u * u
    elif code == 3:
        shape = (math.exp(u) - 1.0) / _E_MINUS_1
    else:
        shape = (math.exp(u**exponents) - 1.0) / _E_MINUS_1
    return lam_max * shape


def lam_at(
    schedule: str, t: int, T: int, lam_max: float = 1.0, exponents: float = 4.0
) -> float:
    """λ at step ``t`` of a ramp window of ``T`` steps."""
    return lam(schedule, ramp_position(t, T), lam_max, exponents)
