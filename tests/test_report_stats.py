"""The report's statistics on cases with known answers: a constant difference, large-n binomials against the normal
approximation, McNemar's test by hand."""

from __future__ import annotations

import numpy as np
import pytest

from sightbeyond.report.stats import (Bootstrap, Docs, bootstrap, mcnemar, mean_of_strata, paired_bootstrap,
                                      relative_change)


def docs(values, strata=None, statistic=None, keys=None) -> Docs:
    values = np.asarray(values, dtype=float)
    keys = np.array(keys if keys is not None else [str(i) for i in range(len(values))], dtype=object)
    strata = np.asarray(strata if strata is not None else np.zeros(len(values), dtype=int))
    return Docs(keys, values, strata) if statistic is None else Docs(keys, values, strata, statistic)


def test_constant_difference_has_a_zero_width_interval():
    a = np.random.default_rng(0).random(500)
    c = paired_bootstrap(docs(a), docs(a + 0.1), Bootstrap(500))
    assert c.delta == pytest.approx(0.1)
    assert c.low == pytest.approx(0.1) and c.high == pytest.approx(0.1)
    assert c.test == "bootstrap" and c.p < 0.01 and c.n == 500


def test_large_binomial_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    n, p = 10_000, 0.3
    x = (rng.random(n) < p).astype(float)
    est = bootstrap(docs(x), Bootstrap(2000, seed=3))
    se = np.sqrt(x.mean() * (1 - x.mean()) / n)
    assert est.value == x.mean()
    assert est.low == pytest.approx(x.mean() - 1.96 * se, abs=0.15 * se)
    assert est.high == pytest.approx(x.mean() + 1.96 * se, abs=0.15 * se)


def test_paired_interval_matches_the_normal_approximation_of_the_differences():
    rng = np.random.default_rng(2)
    n = 10_000
    a = (rng.random(n) < 0.50).astype(float)
    b = np.where(rng.random(n) < 0.8, a, (rng.random(n) < 0.6).astype(float))  # correlated, as two models are
    d = b - a
    se = d.std() / np.sqrt(n)
    c = paired_bootstrap(docs(a), docs(b), Bootstrap(2000, seed=4))
    assert c.delta == pytest.approx(d.mean())
    assert c.low == pytest.approx(d.mean() - 1.96 * se, abs=0.15 * se)
    assert c.high == pytest.approx(d.mean() + 1.96 * se, abs=0.15 * se)
    assert c.test == "mcnemar"


def test_mcnemar_by_hand():
    # 1 document only a gets right, 5 only b, 4 both, 2 neither: the exact test is binomial(6, 1/2) on the
    # discordant pairs, P(X <= 1) = 7/64, two-sided 14/64; mid-p takes half of P(X = 1) = 6/64 off each tail: 8/64
    a = np.array([1] + [0] * 5 + [1] * 4 + [0] * 2)
    b = np.array([0] + [1] * 5 + [1] * 4 + [0] * 2)
    assert mcnemar(a, b, mid_p=False) == pytest.approx(14 / 64)
    assert mcnemar(a, b) == pytest.approx(8 / 64)
    assert mcnemar(b, a) == pytest.approx(8 / 64)
    assert mcnemar(a, a) == 1.0                                   # no discordant pair
    assert mcnemar([1, 0, 1, 0], [0, 1, 0, 1]) == 1.0             # balanced discordance


def test_mcnemar_with_thousands_of_discordant_pairs_is_finite():
    a = np.array([1] * 3000 + [0] * 3300)
    p = mcnemar(a, 1 - a)
    assert 0 < p < 0.01


def test_stratified_statistic_is_the_mean_of_strata_means():
    # two strata of different sizes: the mean of means (ETHICS's) differs from the pooled mean
    values, strata = [1, 1, 1, 0], [0, 0, 0, 1]
    d = docs(values, strata, mean_of_strata)
    assert d.score() == pytest.approx(0.5)
    est = bootstrap(d, Bootstrap(200))
    assert est.low <= 0.5 <= est.high
    # a stratum with one document keeps its one document in every resample
    assert est.low >= 0.0 and est.high <= 0.5


def test_pairing_needs_the_same_documents():
    a = docs([1, 0, 1], keys=["x", "y", "z"])
    assert paired_bootstrap(a, docs([1, 1, 1], keys=["x", "y", "w"]), Bootstrap(50)) is None
    shuffled = docs([1, 1, 1], keys=["z", "x", "y"])  # same documents in another order: paired by key
    assert paired_bootstrap(a, shuffled, Bootstrap(50)).delta == pytest.approx(1 / 3)


def test_seeded_and_relative():
    rng = np.random.default_rng(5)
    a, b = rng.random(300) + 1, rng.random(300) + 0.8
    first = paired_bootstrap(docs(a), docs(b), Bootstrap(300, seed=7), relative_change)
    assert first == paired_bootstrap(docs(a), docs(b), Bootstrap(300, seed=7), relative_change)
    assert first.delta == pytest.approx(100 * (b.mean() - a.mean()) / a.mean())
    assert first.low < first.delta < first.high and first.test == "bootstrap"
