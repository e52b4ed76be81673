"""λ schedules of SPEC §4: exact values at the start and the end of a window."""

from __future__ import annotations

import math

import pytest

from rsst.errors import UserError
from rsst.schedules import SCHEDULES, lam, lam_at, ramp_position, schedule_code
from rsst_kernels import schedules as kernel_schedules

E1 = math.e - 1.0


def expected(schedule: str, u: float, lam_max: float, p: float) -> float:
    return lam_max * {
        "x": u,
        "x^2": u**2,
        "x^3": u**3,
        "exp": (math.exp(u) - 1) / E1,
        "exp_custom_exponents": (math.exp(u**p) - 1) / E1,
    }[schedule]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("T", [1, 7, 391])
def test_lam_first_and_last_step(schedule: str, T: int) -> None:
    lam_max, p = 0.37, 3.0
    first = expected(schedule, 1 / T, lam_max, p)
    assert lam_at(schedule, 0, T, lam_max, p) == pytest.approx(first)
    assert lam_at(schedule, T - 1, T, lam_max, p) == pytest.approx(lam_max, rel=1e-12)
    # past the end of the window λ stays at λ_max
    assert lam_at(schedule, T + 5, T, lam_max, p) == pytest.approx(lam_max, rel=1e-12)


def test_lam_known_numbers() -> None:
    # u = 1/2, λ_max = 2, p = 4
    assert lam("x", 0.5, 2.0) == pytest.approx(1.0)
    assert lam("x^2", 0.5, 2.0) == pytest.approx(0.5)
    assert lam("x^3", 0.5, 2.0) == pytest.approx(0.25)
    assert lam("exp", 0.5, 2.0) == pytest.approx(2 * (math.exp(0.5) - 1) / E1)
    assert lam("exp_custom_exponents", 0.5, 2.0, 4.0) == pytest.approx(
        2 * (math.exp(0.0625) - 1) / E1
    )


def test_research_formula_equivalence() -> None:
    # research code: g/(e-1)·(exp((i+1)^p / j^p) - 1) for step i of j
    g, p, j = 1.0, 4.0, 50
    for i in (0, 10, 49):
        research = g / E1 * (math.exp((i + 1) ** p / j**p) - 1)
        assert lam_at("exp_custom_exponents", i, j, g, p) == pytest.approx(research, rel=1e-12)


def test_schedules_rise_monotonically() -> None:
    for schedule in SCHEDULES:
        values = [lam_at(schedule, t, 20) for t in range(20)]
        assert all(b > a for a, b in zip(values, values[1:], strict=False)), schedule


def test_ramp_position() -> None:
    assert ramp_position(0, 4) == 0.25
    assert ramp_position(3, 4) == 1.0
    assert ramp_position(10, 4) == 1.0


def test_unknown_schedule_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown schedule"):
        lam("cubic", 0.5)


def test_names_and_codes_are_the_kernels():
    """`rsst.schedules` fronts the kernel's formulas: same names, codes are indices, same values."""
    assert SCHEDULES is kernel_schedules.SCHEDULES
    for code, name in enumerate(SCHEDULES):
        assert schedule_code(name) == code
        assert lam(name, 0.3, 0.9, 2.0) == kernel_schedules.lam_of_code(code, 0.3, 0.9, 2.0)
    with pytest.raises(ValueError, match="unknown schedule code"):
        kernel_schedules.lam_of_code(len(SCHEDULES), 0.5)
