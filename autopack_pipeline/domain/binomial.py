"""The binomial distribution's probabilities, summed over its terms with numpy.

Why not ``scipy.special.bdtr``: importing ``scipy.special`` loads scipy's array-API layer, which clones
numpy's namespace and with it imports ``numpy.testing`` (and ``unittest``), ``numpy.f2py`` and ``numpy.ma``:
0.3 s of CPU, where all of ``calibrate`` at a million events is about a second. The pooled margins ask
for a handful of probabilities per calibration, which a sum of terms gives as exactly as those
functions do (the tests compare with ``scipy.stats.binom``).

The terms are built outward from the mode by their ratio ``P(i + 1) / P(i) = (n - i) / (i + 1) * p / (1 - p)``,
so no factorial or gamma function of a large ``n`` is needed, and only those within ``TAIL_SIGMAS``
standard deviations (and ``TAIL_MIN`` terms) of the mode: the mass beyond lies far below a double's
precision of 1 (Bernstein's inequality puts it under ``e**-70``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

TAIL_SIGMAS = 50
TAIL_MIN = 60


@dataclass(frozen=True)
class Binomial:
    """The number of successes in ``n`` independent trials that each succeed with chance ``p``."""

    n: int
    p: float

    @cached_property
    def _terms(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(first count, P(X <= count) and P(X > count) for every count of the window from it)."""
        n, p = self.n, self.p
        if p <= 0 or p >= 1 or n == 0:  # all the mass on one count
            at = 0 if p <= 0 else n
            return at, np.ones(1), np.zeros(1)
        mode = min(n, math.floor((n + 1) * p))
        reach = math.ceil(TAIL_SIGMAS * math.sqrt(n * p * (1 - p))) + TAIL_MIN
        low, high = max(0, mode - reach), min(n, mode + reach)
        counts = np.arange(low, high, dtype=np.float64)  # the ratio from each count to the next
        log_ratio = np.log((n - counts) / (counts + 1)) + (math.log(p) - math.log1p(-p))
        log_terms = np.zeros(high - low + 1)
        above, below = log_ratio[mode - low:], log_ratio[:mode - low]
        log_terms[mode - low + 1:] = np.cumsum(above)
        log_terms[:mode - low] = -np.cumsum(below[::-1])[::-1]
        terms = np.exp(log_terms)  # relative to the mode's term, which is 1
        running = np.cumsum(terms)
        total = running[-1]  # so that P(X <= high) is 1 to the bit
        at_most = running / total
        beyond = np.r_[np.cumsum(terms[:0:-1])[::-1], 0.0] / total
        return low, at_most, beyond

    def cdf(self, k: int) -> float:
        """P(X <= k)."""
        low, at_most, _ = self._terms
        if k < low:
            return 0.0
        return float(at_most[min(k - low, len(at_most) - 1)])

    def sf(self, k: int) -> float:
        """P(X > k), summed from the upper terms (not ``1 - cdf``, which loses a small tail)."""
        low, _, beyond = self._terms
        if k < low:
            return 1.0
        return float(beyond[min(k - low, len(beyond) - 1)])

    def least_reaching(self, probability: float) -> int:
        """The least ``k`` with ``P(X <= k) >= probability`` (``probability`` at most 1)."""
        low, at_most, _ = self._terms
        index = int(np.searchsorted(at_most, probability, side="left"))
        return low + min(index, len(at_most) - 1)
