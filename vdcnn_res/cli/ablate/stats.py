"""Statistics over seeds: mean +- sd of a group, paired differences with a Student-t confidence interval.

scipy is not a dependency of the project; the one quantile needed (two-sided 95 %) comes from the
standard table for 1-30 degrees of freedom and, beyond, the Cornish-Fisher expansion of the t
quantile around the normal one (off by less than 1e-7 from 31 degrees of freedom on, against
numerical integration of the t density; tests/cli/test_ablate.py checks the same for every table entry).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Interval", "Spread", "mean_ci", "paired_differences", "spread", "t975"]

# t(0.975, df) for df = 1..30 (two-sided 95 %).
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (the 95 % two-sided factor)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = statistics.NormalDist().inv_cdf(0.975)
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + sum(term / df**k for k, term in enumerate(terms, 1))


def _finite(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values if not math.isnan(v)]


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (n - 1) of n values; sd is NaN for one value, both for none."""

    n: int
    mean: float
    sd: float


def spread(values: Iterable[float]) -> Spread:
    """Mean +- sd of the finite values (a failed seed's NaN is left out, not counted)."""
    xs = _finite(values)
    mean = statistics.fmean(xs) if xs else math.nan
    return Spread(len(xs), mean, statistics.stdev(xs) if len(xs) > 1 else math.nan)


@dataclass(frozen=True)
class Interval:
    """A mean with its confidence interval; lo and hi are NaN when n < 2 (one value gives no interval)."""

    n: int
    mean: float
    lo: float
    hi: float


def mean_ci(values: Iterable[float]) -> Interval:
    """The mean of the finite values with its 95 % Student-t interval: mean +- t(0.975, n-1) sd / sqrt(n)."""
    s = spread(values)
    if s.n < 2:
        return Interval(s.n, s.mean, math.nan, math.nan)
    half = t975(s.n - 1) * s.sd / math.sqrt(s.n)
    return Interval(s.n, s.mean, s.mean - half, s.mean + half)


def paired_differences(treated: Mapping[int, float], control: Mapping[int, float]) -> dict[int, float]:
    """treated - control for every key (seed) both have a finite value for, in key order."""
    return {
        k: treated[k] - control[k]
        for k in sorted(treated.keys() & control.keys())
        if not (math.isnan(treated[k]) or math.isnan(control[k]))
    }
