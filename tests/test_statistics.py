"""bigbatch_jax.statistics against scipy on fixed numbers, power against simulation, and every
outcome of every kind flipped by numbers built to flip it."""

import math

import numpy as np
import pytest
from scipy import stats

from bigbatch_jax import statistics
from bigbatch_jax.statistics import CONTRADICTED, INCONCLUSIVE, SHOWN, Hypothesis

A = [83.1, 82.2, 84.0, 83.5, 82.9]
B = [81.4, 80.6, 82.3, 81.0]
SUPERIORITY = Hypothesis("superiority", effect=1.0)
NON_INFERIORITY = Hypothesis("non_inferiority", effect=0.0, margin=1.0)
EQUIVALENCE = Hypothesis("equivalence", effect=0.0, margin=1.0)


def test_p_values_and_interval_are_scipys_welch_tests():
  w = statistics.welch(A, B)
  a, b = np.asarray(A), np.asarray(B)
  welch = stats.ttest_ind(a, b, equal_var=False)
  assert w.difference == pytest.approx(a.mean() - b.mean())
  assert w.df == pytest.approx(welch.df)
  assert statistics.ci95(w) == pytest.approx(tuple(welch.confidence_interval(0.95)))
  greater = stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
  assert statistics.p_value(SUPERIORITY, w) == pytest.approx(greater)
  # Non-inferiority with margin m is superiority of a + m over b.
  shifted = stats.ttest_ind(a + 1.0, b, equal_var=False, alternative="greater").pvalue
  assert statistics.p_value(NON_INFERIORITY, w) == pytest.approx(shifted)
  # TOST: the larger of the two one-sided p-values at -m and +m.
  upper = stats.ttest_ind(a - 1.0, b, equal_var=False, alternative="less").pvalue
  assert statistics.p_value(EQUIVALENCE, w) == pytest.approx(max(shifted, upper))
  assert statistics.mean_ci95(A) == pytest.approx(
    stats.t.interval(0.95, len(A) - 1, loc=np.mean(A), scale=stats.sem(A))
  )
  assert statistics.mean_ci95([1.0]) is None


@pytest.mark.parametrize(
  "hypothesis, shift",
  [
    (Hypothesis("superiority", effect=1.5), 1.5),
    (Hypothesis("non_inferiority", effect=0.0, margin=1.0), 0.0),
    (Hypothesis("equivalence", effect=0.2, margin=1.5), 0.2),
  ],
)
def _simulated_power(hypothesis, shift, n, sd_a, sd_b):
  """The rejection rate of scipy's Welch tests over 20 000 simulated experiments."""
  rng = np.random.default_rng(0)
  a = rng.normal(shift, sd_a, (20_000, n))
  b = rng.normal(0.0, sd_b, (20_000, n))
  if hypothesis.kind == "superiority":
    p = stats.ttest_ind(a, b, axis=1, equal_var=False, alternative="greater").pvalue
  else:
    m = hypothesis.margin
    p = stats.ttest_ind(a + m, b, axis=1, equal_var=False, alternative="greater").pvalue
    if hypothesis.kind == "equivalence":
      upper = stats.ttest_ind(a - m, b, axis=1, equal_var=False, alternative="less").pvalue
      p = np.maximum(p, upper)
  return float(np.mean(p < statistics.ALPHA))


def _power(hypothesis, n, sd_a, sd_b):
  va, vb = sd_a**2 / n, sd_b**2 / n
  return statistics.power_at(
    hypothesis, math.sqrt(va + vb), (va + vb) ** 2 / ((va**2 + vb**2) / (n - 1))
  )


@pytest.mark.parametrize(
  "hypothesis, shift",
  [
    (Hypothesis("superiority", effect=1.0), 1.0),
    (Hypothesis("non_inferiority", effect=0.0, margin=1.0), 0.0),
    (Hypothesis("equivalence", effect=0.2, margin=1.2), 0.2),
  ],
  ids=lambda v: getattr(v, "kind", ""),
)
def test_power_matches_simulated_rejection_rates(hypothesis, shift):
  """At 10 seeds per row the power is the simulated one; at 3 it errs on the optimistic side
  (the estimated Welch df is random and smaller), by less than 0.1."""
  simulated = _simulated_power(hypothesis, shift, 10, 1.0, 0.8)
  assert 0.2 < simulated < 0.95  # a rate the comparison can resolve
  assert _power(hypothesis, 10, 1.0, 0.8) == pytest.approx(simulated, abs=0.015)
  few = _simulated_power(hypothesis, shift, 3, 1.0, 0.8)
  assert few <= _power(hypothesis, 3, 1.0, 0.8) < few + 0.1


def test_seeds_needed_is_the_first_n_with_80_percent_power():
  for h in (SUPERIORITY, NON_INFERIORITY, EQUIVALENCE):
    n = statistics.seeds_needed(h, 1.2, 0.9)
    power = [
      statistics.power_at(
        h, math.sqrt((1.2**2 + 0.9**2) / k), statistics._welch_df(1.44, k, 0.81, k)
      )
      for k in (n - 1, n)
    ]
    assert power[0] < statistics.TARGET_POWER <= power[1], (h, n, power)
  # No number of seeds shows equivalence when the paper's effect is beyond the margin.
  assert statistics.seeds_needed(Hypothesis("equivalence", 1.5, 1.0), 1.0, 1.0) is None
  assert statistics.seeds_needed(Hypothesis("non_inferiority", -2.0, 1.0), 1.0, 1.0) is None


def _values(mean, spread, n=5):
  return list(mean + spread * np.linspace(-1, 1, n))


# kind -> outcome -> (a, b): numbers built for that outcome, b around 80.
FLIPS = {
  SUPERIORITY: {
    SHOWN: (_values(82.0, 0.3), _values(80.0, 0.3)),
    CONTRADICTED: (_values(80.1, 0.3), _values(80.0, 0.3)),  # CI below the paper's +1.0
    INCONCLUSIVE: (_values(81.0, 2.5), _values(80.0, 2.5)),
  },
  NON_INFERIORITY: {
    SHOWN: (_values(80.0, 0.3), _values(80.0, 0.3)),
    CONTRADICTED: (_values(78.0, 0.3), _values(80.0, 0.3)),  # CI below -margin
    INCONCLUSIVE: (_values(79.0, 1.5), _values(80.0, 1.5)),
  },
  EQUIVALENCE: {
    SHOWN: (_values(80.2, 0.3), _values(80.0, 0.3)),
    CONTRADICTED: (_values(82.0, 0.3), _values(80.0, 0.3)),  # CI beyond +margin
    INCONCLUSIVE: (_values(80.5, 1.5), _values(80.0, 1.5)),
  },
}


@pytest.mark.parametrize("hypothesis", list(FLIPS), ids=lambda h: h.kind)
def test_each_outcome_of_each_kind_on_numbers_built_for_it(hypothesis):
  for outcome, (a, b) in FLIPS[hypothesis].items():
    result = statistics.evaluate(hypothesis, a, b)
    assert result["outcome"] == outcome, (hypothesis.kind, outcome, result)
    assert set(result) >= {"difference", "ci95", "p_value", "power", "seeds_needed", "n"}
    low, high = result["ci95"]
    assert low < result["difference"] < high and result["n"] == [len(a), len(b)]
  # Shown exactly when the 95% interval lies in the claim's region (one-sided tests at 0.025).
  for shift in np.linspace(0.0, 1.5, 31):
    r = statistics.evaluate(hypothesis, _values(80.0 + shift, 0.5), _values(80.0, 0.5))
    low, high = r["ci95"]
    region = {
      "superiority": low > 0,
      "non_inferiority": low > -hypothesis.margin,
      "equivalence": -hypothesis.margin < low and high < hypothesis.margin,
    }[hypothesis.kind]
    assert (r["outcome"] == SHOWN) == region, (shift, r)
  # Equivalence is contradicted from below too.
  below = statistics.evaluate(EQUIVALENCE, _values(78.0, 0.3), _values(80.0, 0.3))
  assert below["outcome"] == CONTRADICTED


def test_holm_adjusts_by_hand_and_can_turn_shown_into_inconclusive():
  assert statistics.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
  assert statistics.holm([0.5]) == [0.5] and statistics.holm([]) == []
  a, b = _values(80.6, 0.5), _values(80.0, 0.5)
  alone = statistics.evaluate(SUPERIORITY, a, b)
  assert alone["outcome"] == SHOWN and 0.01 < alone["p_value"] < statistics.ALPHA
  weak = statistics.evaluate(SUPERIORITY, _values(80.0, 0.5), _values(80.0, 0.5))
  adjusted = statistics.adjust([alone, weak, weak], [SUPERIORITY] * 3)
  assert adjusted[0]["p_holm"] == pytest.approx(3 * alone["p_value"])
  assert adjusted[0]["outcome"] == INCONCLUSIVE and adjusted[0]["p_value"] == alone["p_value"]


def test_spreadless_rows_are_decided_exactly():
  result = statistics.evaluate(NON_INFERIORITY, [80.0, 80.0], [80.5, 80.5])
  assert result["ci95"] == [-0.5, -0.5] and result["p_value"] == 0.0
  assert result["outcome"] == SHOWN and result["power"] == 1.0


def test_bad_input_names_the_value():
  with pytest.raises(ValueError, match=r"kind 'better'.*superiority"):
    Hypothesis("better", effect=1.0)
  with pytest.raises(ValueError, match="positive paper effect"):
    Hypothesis("superiority", effect=0.0)
  with pytest.raises(ValueError, match="needs a margin > 0"):
    Hypothesis("equivalence", effect=0.0)
  with pytest.raises(ValueError, match=r"at least 2 per-seed values.*got 1 and 3"):
    statistics.evaluate(SUPERIORITY, [80.0], [1.0, 2.0, 3.0])
  with pytest.raises(ValueError, match="finite"):
    statistics.evaluate(SUPERIORITY, [80.0, float("nan")], [1.0, 2.0])
  with pytest.raises(ValueError, match="2 results but 1 hypotheses"):
    statistics.adjust([{}, {}], [SUPERIORITY])
