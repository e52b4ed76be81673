"""Statistics over seeds: mean, sample standard deviation, and the 95 % confidence interval of
the mean from Student's t with n − 1 degrees of freedom (none for a single seed)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

#: two-sided 95 % quantiles t(0.975; df) for df = 1..30
T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
        2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
        2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
Z975 = 1.959963984540054


def t975(df: int) -> float:
    """t(0.975; df): the table to 30, then the Cornish-Fisher expansion around the normal
    quantile (error below 1e-4 there)."""
    if df < 1:
        raise ValueError("a t quantile needs df ≥ 1")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


@dataclass(frozen=True)
class Summary:
    """Mean ± std over n values; ``half`` is the 95 % interval's half-width (None for n < 2)."""

    n: int
    mean: float | None
    std: float | None
    half: float | None

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.half is None or self.mean is None:
            return None
        return self.mean - self.half, self.mean + self.half


def summarize(values: list[float]) -> Summary:
    values = [v for v in values if v is not None and math.isfinite(v)]
    n = len(values)
    if n == 0:
        return Summary(0, None, None, None)
    mean = statistics.fmean(values)
    if n == 1:
        return Summary(1, mean, 0.0, None)
    std = statistics.stdev(values)
    return Summary(n, mean, std, t975(n - 1) * std / math.sqrt(n))
