"""The binomial distribution's probabilities, summed over its terms with numpy.

Why not ``scipy.special.bdtr``: importing ``scipy.special`` loads scipy's array-API layer, which clones
numpy's namespace and with it imports ``numpy.testing`` (and ``unittest``), ``numpy.f2py`` and ``numpy.ma``:
0.3 s of CPU, where all of ``calibrate`` at a million events is about a second. The pooled margins ask
for a few probabilities per group, which a sum of terms gives as exactly as those functions do (the tests
compare with exact rational sums and with ``scipy.stats.binom``).

The terms are built outward from the mode by their ratio ``P(i + 1) / P(i) = (n - i) / (i + 1) * p / (1 - p)``,
so no factorial or gamma function of a large ``n`` is needed, and only those within :func:`_reach` of the
mode: Bernstein's inequality puts the mass beyond it under ``e**-TAIL_EXPONENT`` on either side, far below a
double's precision of 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

TAIL_EXPONENT = 70


def _reach(variance: float) -> int:
    """Terms from the mode to leave out only ``e**-TAIL_EXPONENT`` of mass: the least ``t`` with
    ``t**2 / (2 * (variance + t / 3)) >= TAIL_EXPONENT`` (Bernstein), plus one for the mode's distance
    from the mean."""
    third = TAIL_EXPONENT / 3
    return math.ceil(third + math.sqrt(third * third + 2 * TAIL_EXPONENT * variance)) + 1


@dataclass(frozen=True)
class Binomial:
    """The number of successes in ``n`` independent trials that each succeed with chance ``p``."""

    n: int
    p: float

    @cached_property
    def _terms(self) -> tuple[int, np.ndarray]:
        """(the window's first count, each count's probability relative to the mode's, from there)."""
        n, p = self.n, self.p
        if p <= 0 or p >= 1 or n == 0:  # all the mass on one count
            return (0 if p <= 0 else n), np.ones(1)
        mode = min(n, math.floor((n + 1) * p))
        reach = _reach(n * p * (1 - p))
        low, high = max(0, mode - reach), min(n, mode + reach)
        counts = np.arange(low, high, dtype=np.float64)  # the ratio from each count to the next
        log_ratio = np.log((n - counts) / (counts + 1))
        log_ratio += math.log(p) - math.log1p(-p)
        up, down = log_ratio[mode - low:], log_ratio[:mode - low]  # the ratios above the mode, below it
        log_terms = np.zeros(high - low + 1)  # the mode's is log 1
        np.cumsum(up, out=log_terms[mode - low + 1:])
        log_terms[:mode - low] = -np.cumsum(down[::-1])[::-1]  # each term below: the next one over its ratio
        return low, np.exp(log_terms, out=log_terms)

    @cached_property
    def _at_most(self) -> np.ndarray:
        """P(X <= count) over the window; its last is 1 to the bit."""
        running = np.cumsum(self._terms[1])
        return running / running[-1]

    @cached_property
    def _beyond(self) -> np.ndarray:
        """P(X > count) over the window, summed from the upper terms (not ``1 - cdf``, which loses a small tail)."""
        terms = self._terms[1]
        beyond = np.r_[np.cumsum(terms[:0:-1])[::-1], 0.0]  # the terms after each count, added from the top
        return beyond / (beyond[0] + terms[0])

    def cdf(self, k: int) -> float:
        """P(X <= k)."""
        low = self._terms[0]
        return 0.0 if k < low else float(self._at_most[min(k - low, len(self._at_most) - 1)])

    def sf(self, k: int) -> float:
        """P(X > k)."""
        low = self._terms[0]
        return 1.0 if k < low else float(self._beyond[min(k - low, len(self._beyond) - 1)])

    def least_reaching(self, probability: float) -> int:
        """The least ``k`` with ``P(X <= k) >= probability`` (``probability`` at most 1)."""
        index = int(np.searchsorted(self._at_most, probability, side="left"))
        return self._terms[0] + min(index, len(self._at_most) - 1)
