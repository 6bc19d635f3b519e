"""Confidence intervals and paired significance tests over per-document results.

A metric is a statistic of its documents' results (accuracy: their mean; ETHICS: the mean of five subsets' means;
MME: sums over subtasks). The bootstrap resamples documents with replacement within each stratum (a subset, a
subtask), so every resample is scored exactly as the benchmark scores the real set; two models evaluated on the same
documents are resampled together, which is what makes small differences detectable (Koehn, 2004).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# (resamples, documents[, features]) values and the documents' strata -> (resamples,) scores
Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]
# (score of a, score of b) -> the reported change from a to b
Contrast = Callable[[np.ndarray, np.ndarray], np.ndarray]


def mean(values: np.ndarray, strata: np.ndarray) -> np.ndarray:
    return values.mean(axis=1)


def mean_of_strata(values: np.ndarray, strata: np.ndarray) -> np.ndarray:
    """The unweighted mean of the strata's means (ETHICS's "Ethics Acc.": five subsets of different sizes)."""
    return np.mean([values[:, strata == s].mean(axis=1) for s in np.unique(strata)], axis=0)


def pooled(values: np.ndarray, strata: np.ndarray) -> np.ndarray:
    """Clusters of (right answers, questions): the share right over all their questions. Resampling whole clusters
    (POPE's images, each asked several questions) keeps the questions' correlation within an image in the interval,
    the clustered standard errors of lmms-eval."""
    return values[..., 0].sum(axis=-1) / values[..., 1].sum(axis=-1)


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return b - a


def relative_change(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """In percent of a (Table 5: COCO-C against clean COCO)."""
    return 100 * (b - a) / a


@dataclass(frozen=True)
class Docs:
    """One run's per-document results for one metric, in the metric's logged units."""

    keys: np.ndarray          # (n,) the document's identity: the same document has the same key in every run
    values: np.ndarray        # (n,) or (n, features)
    strata: np.ndarray        # (n,) int
    statistic: Statistic = mean

    def score(self) -> float:
        return float(self.statistic(self.values[None], self.strata)[0])

    @property
    def binary(self) -> bool:
        return self.values.ndim == 1 and bool(np.isin(self.values, (0, 1)).all())


@dataclass(frozen=True)
class Bootstrap:
    resamples: int = 2000
    seed: int = 0
    confidence: float = 0.95


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int

    def scaled(self, k: float) -> Estimate:
        return Estimate(k * self.value, k * self.low, k * self.high, self.n)


@dataclass(frozen=True)
class Comparison:
    delta: float
    low: float
    high: float
    p: float
    test: str                 # "mcnemar" (binary results, mid-p) | "bootstrap"
    n: int

    def scaled(self, k: float) -> Comparison:
        return Comparison(k * self.delta, k * self.low, k * self.high, self.p, self.test, self.n)


def _resampled_scores(values: list[np.ndarray], strata: np.ndarray, statistic: Statistic,
                      boot: Bootstrap) -> list[np.ndarray]:
    """Each array of `values` (aligned by document) scored on the same stratified resamples: (resamples,) each."""
    rng = np.random.default_rng(boot.seed)
    order = np.argsort(strata, kind="stable")
    blocks = [order[strata[order] == s] for s in np.unique(strata)]
    sorted_strata = strata[order]
    n = len(strata)
    chunk = max(1, 2_000_000 // max(n, 1))  # resamples per batch: bounded memory for large benchmarks
    scores: list[list[np.ndarray]] = [[] for _ in values]
    for start in range(0, boot.resamples, chunk):
        size = min(chunk, boot.resamples - start)
        index = np.concatenate([block[rng.integers(0, len(block), (size, len(block)))] for block in blocks], axis=1)
        for out, v in zip(scores, values):
            out.append(statistic(v[index], sorted_strata))
    return [np.concatenate(s) for s in scores]


def _interval(samples: np.ndarray, boot: Bootstrap) -> tuple[float, float]:
    tail = 100 * (1 - boot.confidence) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap(docs: Docs, boot: Bootstrap) -> Estimate:
    """The metric with its percentile bootstrap interval."""
    (samples,) = _resampled_scores([docs.values], docs.strata, docs.statistic, boot)
    return Estimate(docs.score(), *_interval(samples, boot), n=len(docs.keys))


def align(a: Docs, b: Docs) -> Docs | None:
    """`b` in `a`'s document order; None unless both hold exactly the same documents, as pairing needs."""
    if len(a.keys) != len(b.keys) or len(set(a.keys.tolist())) != len(a.keys):
        return None
    position = {k: i for i, k in enumerate(b.keys.tolist())}
    try:
        order = np.array([position[k] for k in a.keys.tolist()], dtype=int)
    except KeyError:
        return None
    return Docs(b.keys[order], b.values[order], b.strata[order], b.statistic)


def paired_bootstrap(a: Docs, b: Docs, boot: Bootstrap, contrast: Contrast = difference) -> Comparison | None:
    """contrast(a, b) with its paired bootstrap interval and a two-sided p-value: McNemar's mid-p where both are
    right/wrong per document, else the bootstrap's (the share of resampled contrasts at least as far from the
    observed one as the observed one is from zero). None when the runs were not evaluated on the same documents."""
    b = align(a, b)
    if b is None:
        return None
    observed = float(contrast(np.array(a.score()), np.array(b.score())))
    sa, sb = _resampled_scores([a.values, b.values], a.strata, a.statistic, boot)
    samples = contrast(sa, sb)
    low, high = _interval(samples, boot)
    # McNemar pools the discordant pairs of all strata: under its null (no document more likely right under one model
    # than the other) that holds whatever the statistic weighs the strata by
    if a.binary and b.binary and contrast is difference:
        return Comparison(observed, low, high, mcnemar(a.values, b.values), "mcnemar", len(a.keys))
    extreme = np.sum(np.abs(samples - observed) >= abs(observed))
    return Comparison(observed, low, high, float((1 + extreme) / (1 + len(samples))), "bootstrap", len(a.keys))


def mcnemar(a: np.ndarray, b: np.ndarray, *, mid_p: bool = True) -> float:
    """Two-sided McNemar test of paired right/wrong results, exact binomial on the discordant pairs; the mid-p
    variant (Fagerland et al., 2013) by default, which holds its level without the exact test's conservatism.
    Exact integer arithmetic, so thousands of discordant pairs lose no precision."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n, k = only_a + only_b, min(only_a, only_b)
    twice_tail = 2 * sum(math.comb(n, i) for i in range(k + 1)) - (math.comb(n, k) if mid_p else 0)
    return min(1.0, twice_tail / 2**n)


def stars(p: float | None) -> str:
    if p is None:
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""
