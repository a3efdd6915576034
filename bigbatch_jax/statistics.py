"""Tests of claims about per-seed results: superiority, non-inferiority, equivalence.

A claim compares two rows of per-seed values (test accuracies in points),
``a`` and ``b``, through their difference of means ``d = mean(a) - mean(b)``
and is stated as one of three hypotheses, each with the test that fits its
wording:

* ``superiority`` ("a above b"): Welch's one-sided t-test of d <= 0.
* ``non_inferiority`` ("a not below b", "a closes the gap to b"): Welch's
  one-sided t-test of d <= -margin.
* ``equivalence`` ("a similar to b"): two one-sided Welch tests (TOST) of
  d <= -margin and d >= +margin; p is the larger of the two.

Every test is one-sided at ``ALPHA`` = 0.025, so that a claim is shown (before
any correction for multiplicity) exactly when the two-sided 95% confidence
interval of d, Welch's, lies in the claim's region: above 0, above -margin,
or inside (-margin, +margin). Each result reports the difference, that
interval, the p-value, the power of the test at this n for the paper's effect
(the difference the paper reports; 0 for "similar"), the seeds per row that
would give it ``TARGET_POWER`` and an outcome:

* ``shown``: p (Holm-adjusted across a table's claims, :func:`adjust`) < ALPHA;
* ``contradicted``: the interval excludes what the claim needs: for
  superiority the paper's effect (its upper end is below it), for
  non-inferiority the margin (its upper end is below -margin), for
  equivalence the whole band (it lies beyond +margin or below -margin);
* ``inconclusive``: neither; ``seeds_needed`` says how many seeds per row
  would give the test 80% power for the paper's effect.

Power is computed at the observed standard deviations with Welch's degrees
of freedom: the noncentral t distribution for the one-sided tests, and for
TOST the probability that both reject, integrated over the estimated
standard error (Satterthwaite's chi-square). Both take Welch's degrees of
freedom at the observed stds as known: at 10 seeds per row the power is
within 0.015 of simulated rejection rates, at 3 it is optimistic by up to
about 0.07 (tests/test_statistics.py). Holm's step-down
correction (Holm 1979) controls the family-wise error over the claims of one
table; scipy has no Holm adjustment, so :func:`holm` computes it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import integrate, stats

SHOWN, CONTRADICTED, INCONCLUSIVE = "shown", "contradicted", "inconclusive"
OUTCOMES = (SHOWN, CONTRADICTED, INCONCLUSIVE)
KINDS = ("superiority", "non_inferiority", "equivalence")
ALPHA = 0.025  # one-sided, per test: the two-sided 95% interval's level
TARGET_POWER = 0.8
MAX_SEEDS = 10_000  # seeds_needed beyond this is reported as None (not reachable in practice)


@dataclasses.dataclass(frozen=True)
class Hypothesis:
  """A claim's statistical form.

  Attributes:
    kind: one of ``KINDS``.
    effect: the difference a - b (points) the paper reports or implies; the
      power is computed for it (superiority needs it > 0).
    margin: points; > 0 for non-inferiority and equivalence, 0 for superiority.
  """

  kind: str
  effect: float
  margin: float = 0.0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"hypothesis kind {self.kind!r}; valid: {', '.join(KINDS)}")
    if self.kind == "superiority" and (self.margin != 0 or self.effect <= 0):
      raise ValueError(
        f"superiority takes margin 0 and a positive paper effect; got margin {self.margin}, "
        f"effect {self.effect}"
      )
    if self.kind != "superiority" and not self.margin > 0:
      raise ValueError(f"{self.kind} needs a margin > 0 (points); got {self.margin}")


@dataclasses.dataclass(frozen=True)
class Welch:
  """Welch's difference of means, its standard error and degrees of freedom."""

  difference: float
  se: float
  df: float


def _satterthwaite_df(variances_of_means: Sequence[float], sizes: Sequence[int]) -> float:
  """Welch-Satterthwaite degrees of freedom of a sum of independent means (inf: no spread)."""
  denominator = sum(v * v / (n - 1) for v, n in zip(variances_of_means, sizes))
  return sum(variances_of_means) ** 2 / denominator if denominator > 0 else math.inf


def _welch_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
  """Welch-Satterthwaite degrees of freedom of mean(a) - mean(b)."""
  return _satterthwaite_df([var_a / n_a, var_b / n_b], [n_a, n_b])


def welch(a: Sequence[float], b: Sequence[float]) -> Welch:
  """mean(a) - mean(b) with Welch's standard error and degrees of freedom."""
  return welch_contrast([a, b], [1.0, -1.0])


def welch_contrast(groups: Sequence[Sequence[float]], weights: Sequence[float]) -> Welch:
  """sum_g w_g mean(g) over independent groups, with Welch-Satterthwaite's se and df.

  A difference of two differences (an ablation's change of a gap) is the
  contrast (1, -1, -1, 1) of its four rows. The groups must be independent
  runs: a run entering twice must be entered once with its summed weight.
  The df is Satterthwaite's, sum(v_g)^2 / sum(v_g^2 / (n_g - 1)) with
  v_g = w_g^2 var_g / n_g (inf when every group has no spread).

  Examples:
    >>> w = welch_contrast([[1.0, 2.0, 3.0], [0.0, 1.0, 2.0]], [1.0, -1.0])
    >>> w.difference, round(w.se, 4), w.df
    (1.0, 0.8165, 4.0)
  """
  if len(groups) != len(weights) or not groups:
    raise ValueError(f"{len(groups)} groups but {len(weights)} weights; give one weight per group")
  arrays = [np.asarray(g, dtype=float) for g in groups]
  if any(x.ndim != 1 or len(x) < 2 for x in arrays):
    raise ValueError(
      "each row needs at least 2 per-seed values in a flat list; got "
      + " and ".join(str(len(x)) for x in arrays)
    )
  if not all(np.isfinite(x).all() for x in arrays):
    raise ValueError(f"per-seed values must be finite; got {[x.tolist() for x in arrays]}")
  parts = [w * w * float(np.var(x, ddof=1)) / len(x) for x, w in zip(arrays, weights)]
  difference = sum(w * float(x.mean()) for x, w in zip(arrays, weights))
  return Welch(float(difference), math.sqrt(sum(parts)), _satterthwaite_df(parts, map(len, arrays)))


def ci95(w: Welch) -> tuple[float, float]:
  """Welch's two-sided 95% confidence interval of the difference."""
  half = float(stats.t.ppf(1 - ALPHA, w.df)) * w.se if w.se > 0 else 0.0
  return w.difference - half, w.difference + half


def _one_sided_p(w: Welch, null: float, greater: bool) -> float:
  """p of Welch's one-sided test of d <= null (greater) or d >= null (not greater)."""
  if w.se == 0:  # no spread at all: the difference is known exactly
    return 0.0 if (w.difference > null if greater else w.difference < null) else 1.0
  t = (w.difference - null) / w.se
  return float(stats.t.sf(t, w.df) if greater else stats.t.cdf(t, w.df))


def two_sided_p(w: Welch) -> float:
  """p of Welch's two-sided test of a zero difference (below 0.05 exactly when ``ci95`` excludes 0).

  Examples:
    >>> round(two_sided_p(welch([1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 5.0])), 4)  # scipy's ttest_ind
    0.7846
  """
  return min(1.0, 2 * min(_one_sided_p(w, 0.0, greater=True), _one_sided_p(w, 0.0, greater=False)))


def p_value(h: Hypothesis, w: Welch) -> float:
  """The claim's one-sided p-value (TOST: the larger of its two)."""
  if h.kind == "superiority":
    return _one_sided_p(w, 0.0, greater=True)
  lower = _one_sided_p(w, -h.margin, greater=True)
  if h.kind == "non_inferiority":
    return lower
  return max(lower, _one_sided_p(w, h.margin, greater=False))


def _reject_probability(null: float, greater: bool, effect: float, se: float, df: float) -> float:
  """P(the one-sided test of d vs ``null`` rejects) when the true difference is ``effect``."""
  if se == 0:
    return 1.0 if (effect > null if greater else effect < null) else 0.0
  critical = float(stats.t.ppf(1 - ALPHA, df))
  shift = (effect - null) / se
  if greater:
    return float(stats.nct.sf(critical, df, shift))
  return float(stats.nct.cdf(-critical, df, shift))


def _tost_power(h: Hypothesis, se: float, df: float) -> float:
  """P(both one-sided tests reject) at the paper's effect, integrated over the estimated se.

  With D ~ N(effect, se^2) and the estimate s^2 ~ se^2 chi2(df) / df
  (Satterthwaite's approximation for Welch), TOST rejects when
  -margin + t s < D < margin - t s; this averages that probability over s.
  """
  critical = float(stats.t.ppf(1 - ALPHA, df))
  upper_u = df * (h.margin / (critical * se)) ** 2  # beyond it the band is empty

  def inside(u: float) -> float:
    half = h.margin - critical * se * math.sqrt(u / df)
    band = stats.norm.cdf((half - h.effect) / se) - stats.norm.cdf((-half - h.effect) / se)
    return max(0.0, float(band)) * float(stats.chi2.pdf(u, df))

  return float(integrate.quad(inside, 0.0, upper_u, limit=200)[0])


def power_at(h: Hypothesis, se: float, df: float) -> float:
  """The test's power for the paper's effect, given the standard error and df."""
  if h.kind == "superiority":
    return _reject_probability(0.0, True, h.effect, se, df)
  if h.kind == "non_inferiority":
    return _reject_probability(-h.margin, True, h.effect, se, df)
  if se == 0 or math.isinf(df):
    lower = _reject_probability(-h.margin, True, h.effect, se, df)
    upper = _reject_probability(h.margin, False, h.effect, se, df)
    return max(0.0, lower + upper - 1.0)
  return _tost_power(h, se, df)


def _reachable(h: Hypothesis) -> bool:
  """Whether enough seeds give any power at all for the paper's effect."""
  if h.kind == "superiority":
    return h.effect > 0
  if h.kind == "non_inferiority":
    return h.effect > -h.margin
  return abs(h.effect) < h.margin


def seeds_needed(h: Hypothesis, std_a: float, std_b: float) -> int | None:
  """Seeds per row (both rows alike) for ``TARGET_POWER`` at the observed stds; None: never."""
  if not _reachable(h):
    return None
  for n in range(2, MAX_SEEDS + 1):
    se = math.sqrt((std_a**2 + std_b**2) / n)
    if power_at(h, se, _welch_df(std_a**2, n, std_b**2, n)) >= TARGET_POWER:
      return n
  return None


def decide(h: Hypothesis, p: float, interval: tuple[float, float]) -> str:
  """The outcome word from the (adjusted) p and the 95% interval (module docstring)."""
  if p < ALPHA:
    return SHOWN
  low, high = interval
  if h.kind == "superiority":
    contradicted = high < h.effect
  elif h.kind == "non_inferiority":
    contradicted = high < -h.margin
  else:
    contradicted = low > h.margin or high < -h.margin
  return CONTRADICTED if contradicted else INCONCLUSIVE


def evaluate(h: Hypothesis, a: Sequence[float], b: Sequence[float]) -> dict:
  """The claim ``h`` on per-seed values ``a`` and ``b``: every number and the outcome.

  Returns a JSON-ready dict: ``kind``, ``margin``, ``effect``, ``n`` ([n_a,
  n_b]), ``difference``, ``ci95`` ([low, high]), ``p_value``, ``power``,
  ``seeds_needed`` and ``outcome`` (unadjusted; :func:`adjust` adds
  ``p_holm`` and decides on it).

  Examples:
    >>> h = Hypothesis("non_inferiority", effect=0.26, margin=1.0)
    >>> evaluate(h, [83.1, 82.2, 84.0], [81.4, 80.6, 82.3])["outcome"]
    'shown'
  """
  w = welch(a, b)
  interval = ci95(w)
  p = p_value(h, w)
  return {
    "kind": h.kind,
    "margin": h.margin,
    "effect": h.effect,
    "n": [len(a), len(b)],
    "difference": w.difference,
    "ci95": list(interval),
    "p_value": p,
    "power": power_at(h, w.se, w.df),
    "seeds_needed": seeds_needed(h, float(np.std(a, ddof=1)), float(np.std(b, ddof=1))),
    "outcome": decide(h, p, interval),
  }


def mean_ci95(values: Sequence[float]) -> tuple[float, float] | None:
  """The two-sided 95% t-interval of the mean of ``values``; None with fewer than 2."""
  values = np.asarray(values, dtype=float)
  if len(values) < 2:
    return None
  half = float(stats.t.ppf(1 - ALPHA, len(values) - 1) * stats.sem(values))
  return float(values.mean()) - half, float(values.mean()) + half


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm's step-down adjusted p-values, in the input order (Holm 1979)."""
  m = len(p_values)
  adjusted = [0.0] * m
  running = 0.0
  for rank, i in enumerate(sorted(range(m), key=lambda j: p_values[j])):
    running = max(running, min(1.0, (m - rank) * p_values[i]))
    adjusted[i] = running
  return adjusted


def adjust(results: Sequence[dict], hypotheses: Sequence[Hypothesis]) -> list[dict]:
  """``results`` (of :func:`evaluate`) with ``p_holm`` across them and the outcome decided on it."""
  if len(results) != len(hypotheses):
    raise ValueError(f"{len(results)} results but {len(hypotheses)} hypotheses")
  adjusted = holm([r["p_value"] for r in results])
  return [
    {**r, "p_holm": p, "outcome": decide(h, p, tuple(r["ci95"]))}
    for r, h, p in zip(results, hypotheses, adjusted)
  ]
