"""domain.binomial: the binomial's probabilities as exact sums give them, and as scipy.stats gives them, to 13 and
9 digits (scipy's own error at ten million trials), and within 1e-30 in the tails the window leaves out."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np
import pytest

from autopack_pipeline.domain.binomial import Binomial


def _exact_cdfs(n: int, p: float) -> list[Fraction]:
    """P(X <= k) for every k, in rational arithmetic, from the float ``p`` exactly as given."""
    chance = Fraction(p)
    running, cdfs = Fraction(0), []
    for i in range(n + 1):
        running += comb(n, i) * chance ** i * (1 - chance) ** (n - i)
        cdfs.append(running)
    return cdfs


@pytest.mark.parametrize("n", [1, 2, 7, 20, 59, 200])
@pytest.mark.parametrize("p", [0.001, 0.02, 0.5, 0.95, 0.98])
def test_every_probability_is_the_exact_sum_to_thirteen_digits(n, p):
    binomial = Binomial(n, p)
    for k, exact in enumerate(_exact_cdfs(n, p)):
        for got, want in ((binomial.cdf(k), exact), (binomial.sf(k), 1 - exact)):
            if want > Fraction(1, 10**25):
                assert abs(Fraction(got) - want) <= want * Fraction(1, 10**13), (k, got, float(want))
            else:  # in a tail the window leaves out: right to far below any probability the margins compare
                assert abs(Fraction(got) - want) <= Fraction(1, 10**30), (k, got, float(want))


@pytest.mark.parametrize("n", [1000, 4321, 30000, 718822, 10**7])
@pytest.mark.parametrize("p", [1e-6, 0.02, 0.05, 0.5, 0.95, 0.98])
def test_large_counts_agree_with_scipy_stats(n, p):
    from scipy.stats import binom

    binomial = Binomial(n, p)
    sd = np.sqrt(n * p * (1 - p))
    ks = np.unique(np.clip((n * p + np.linspace(-12, 12, 97) * sd).astype(int), 0, n))
    for k in ks.tolist():
        for got, want in ((binomial.cdf(k), binom.cdf(k, n, p)), (binomial.sf(k), binom.sf(k, n, p))):
            # scipy's own error reaches 3e-10 here (incomplete beta through log-gamma at n = 10**7).
            assert got == pytest.approx(want, rel=1e-9, abs=1e-30), (k, got, want)


def test_the_edges_hold_all_the_mass_where_it_must_be():
    assert Binomial(0, 0.3).cdf(0) == 1.0 and Binomial(0, 0.3).sf(0) == 0.0
    assert Binomial(5, 0.0).cdf(0) == 1.0 and Binomial(5, 0.0).sf(0) == 0.0
    assert Binomial(5, 1.0).cdf(4) == 0.0 and Binomial(5, 1.0).sf(4) == 1.0 and Binomial(5, 1.0).cdf(5) == 1.0
    for binomial in (Binomial(40, 0.3), Binomial(718822, 0.98)):
        assert binomial.cdf(-1) == 0.0 and binomial.sf(-1) == 1.0
        assert binomial.cdf(binomial.n) == 1.0 and binomial.sf(binomial.n) == 0.0
        assert binomial.cdf(binomial.n + 5) == 1.0 and binomial.sf(binomial.n + 5) == 0.0


@pytest.mark.parametrize("n,p", [(0, 0.98), (1, 0.98), (20, 0.98), (300, 0.95), (4321, 0.98), (718822, 0.987)])
@pytest.mark.parametrize("probability", [0.5, 0.9, 0.95, 0.999])
def test_the_least_count_reaching_a_probability(n, p, probability):
    binomial = Binomial(n, p)
    k = binomial.least_reaching(probability)
    assert binomial.cdf(k) >= probability
    assert k == 0 or binomial.cdf(k - 1) < probability
