"""Mean, spread and a confidence interval for a handful of runs' results: the numbers that
summarise a cross-validation or a repeat over seeds.

The interval is Student's t interval of the mean, ``mean +- t(0.975, n-1) * std / sqrt(n)``
with the sample standard deviation (``ddof=1``): with 5 runs t is 2.776, not the normal 1.96,
which would make the interval too narrow for so few values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Spread:
    n: int
    mean: float
    std: float | None  # sample standard deviation (ddof=1); None for a single value
    ci_low: float | None  # the t interval of the mean at `level`; None for a single value
    ci_high: float | None
    level: float = LEVEL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self, digits: int = 4) -> str:
        """``0.8120 ± 0.0150 (std, n=5), 95% CI [0.7934, 0.8306]``."""
        if self.std is None:
            return f"{self.mean:.{digits}f} (n=1: no spread and no interval from one run)"
        return (f"{self.mean:.{digits}f} ± {self.std:.{digits}f} (std, n={self.n}), "
                f"{self.level:.0%} CI [{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}]")


def spread(values: Sequence[float], level: float = LEVEL) -> Spread:
    """Mean, sample std and the t confidence interval of the mean of ``values``.

    >>> s = spread([0.80, 0.82, 0.84])
    >>> round(s.mean, 4), round(s.std, 4), round(s.ci_high - s.mean, 4)
    (0.82, 0.02, 0.0497)
    """
    if not values:
        raise ValueError("spread of no values")
    array = np.asarray(values, dtype=np.float64)
    mean = float(array.mean())
    if len(array) < 2:
        return Spread(1, mean, None, None, None, level)
    std = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(array) - 1)) * std / math.sqrt(len(array))
    return Spread(len(array), mean, std, mean - half, mean + half, level)
