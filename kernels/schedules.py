"""λ schedules of the RSST penalty (SPEC §4) as pure formulas keyed by integer code.

Every schedule is a pure function of the ramp position ``u = (t + 1) / T`` in (0, 1], rising from
about 0 to exactly ``lam_max`` at ``u = 1``. The fused kernel computes the same closed forms
in-kernel from the same codes (``fused_update``); `rsst.schedules` is the by-name front end.
"""

from __future__ import annotations

import math

#: Schedule names; a name's index is the integer code the kernel switches on.
SCHEDULES: tuple[str, ...] = ("x", "x^2", "x^3", "exp", "exp_custom_exponents")

#: The integer codes, named (``SCHEDULES[LINEAR] == "x"``).
LINEAR, SQUARE, CUBE, EXP, EXP_CUSTOM_EXPONENTS = range(len(SCHEDULES))

#: e − 1: the exponential schedules divide by it so that λ(1) = λ_max.
E_MINUS_1 = math.e - 1.0


def ramp_position(t: int, T: int) -> float:
    """``u = (t + 1) / T``: step ``t`` (0-based) of a window of ``T`` steps, clamped to 1."""
    return min((t + 1) / max(T, 1), 1.0)


def lam_of_code(code: int, u: float, lam_max: float = 1.0, exponents: float = 4.0) -> float:
    """λ(u) of SPEC §4 for schedule ``code`` (an index into `SCHEDULES`) and ``u`` in (0, 1]."""
    if code == LINEAR:
        shape = u
    elif code == SQUARE:
        shape = u * u
    elif code == CUBE:
        shape = u * u * u
    elif code == EXP:
        shape = (math.exp(u) - 1.0) / E_MINUS_1
    elif code == EXP_CUSTOM_EXPONENTS:
        shape = (math.exp(u**exponents) - 1.0) / E_MINUS_1
    else:
        raise ValueError(f"unknown schedule code {code}: codes are 0..{len(SCHEDULES) - 1}")
    return lam_max * shape


__all__ = [
    "CUBE",
    "EXP",
    "EXP_CUSTOM_EXPONENTS",
    "E_MINUS_1",
    "LINEAR",
    "SCHEDULES",
    "SQUARE",
    "lam_of_code",
    "ramp_position",
]
