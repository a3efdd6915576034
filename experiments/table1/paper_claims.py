"""The papers' claims, checked on the table's numbers; each one can fail.

Every claim is a dict: ``name``, ``holds`` (bool), ``numbers`` (what it was
decided on) and ``test`` (the rule, in words). A claim whose rows are
missing is left out. "Seed std" is the larger of the two rows' standard
deviations over seeds; p-values are Welch's t-test
(``scipy.stats.ttest_ind(equal_var=False)``) on the per-seed accuracies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from scipy import stats

R2_MIN = 0.9  # Hoffer Fig. 2: ||w - w0|| ~ log t in the initial lr phase
DISTANCE_ROWS = ("sb", "lb", "lb+lr", "lb+lr+gbn", "lb+lr+gbn+ra")
SIGNIFICANT = 0.05


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
  """Two-sided Welch p-value; None with fewer than 2 seeds or no variance at all."""
  if len(a) < 2 or len(b) < 2:
    return None
  p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
  return p if math.isfinite(p) else None


def compare(by: Mapping[str, dict], first: str, second: str) -> dict:
  """The numbers of ``first - second``: means, difference, seed std, Welch p."""
  a, b = by[first], by[second]
  return {
    first: a["test_accuracy_mean"],
    second: b["test_accuracy_mean"],
    "difference": a["test_accuracy_mean"] - b["test_accuracy_mean"],
    "seed_std": max(a["test_accuracy_std"], b["test_accuracy_std"]),
    "p_value": welch_p(a["test_accuracy_per_seed"], b["test_accuracy_per_seed"]),
  }


def _significant(numbers: dict) -> bool:
  return numbers["p_value"] is not None and numbers["p_value"] < SIGNIFICANT


def _claim(name: str, holds: bool, numbers: dict, test: str) -> dict:
  return {"name": name, "holds": bool(holds), "numbers": numbers, "test": test}


def _converged(by) -> dict:
  n = compare(by, "sb@2x", "sb")
  n["tolerance"] = max(2 * n["seed_std"], 0.5)
  return _claim(
    "SB converged: doubling every epoch of its regime changes its accuracy little",
    abs(n["difference"]) < n["tolerance"],
    n,
    "|sb@2x - sb| < max(2 seed-stds, 0.5 points)",
  )


def _lb_below(by) -> dict:
  n = compare(by, "sb", "lb")
  return _claim(
    "LB below SB by more than 2 seed-stds",
    n["difference"] > 2 * n["seed_std"],
    n,
    "sb - lb > 2 seed-stds (Welch p reported)",
  )


def _lr_above(by) -> dict:
  n = compare(by, "lb+lr", "lb")
  return _claim(
    "+LR above LB",
    n["difference"] > 0 and _significant(n),
    n,
    f"lb+lr - lb > 0 with Welch p < {SIGNIFICANT}",
  )


def _not_below(by, first: str, second: str, paper: str) -> dict:
  n = compare(by, first, second)
  return _claim(
    f"{first} not below {second}{paper}",
    not (n["difference"] < 0 and _significant(n)),
    n,
    f"not ({first} - {second} < 0 with Welch p < {SIGNIFICANT})",
  )


def _ra_closes(by) -> dict:
  n = compare(by, "lb+lr+gbn+ra", "sb")
  n["tolerance"] = max(2 * n["seed_std"], 1.0)
  holds = abs(n["difference"]) <= n["tolerance"]
  name = "+RA closes the gap: within max(2 seed-stds, 1 point) of SB"
  if n["difference"] > n["tolerance"]:
    name += " (overshoots: SB undertrained)"
  return _claim(name, holds, n, "|lb+lr+gbn+ra - sb| <= max(2 seed-stds, 1 point)")


def _similar(by, first: str, second: str, name: str) -> dict:
  n = compare(by, first, second)
  n["tolerance"] = max(2 * n["seed_std"], 1.0)
  return _claim(
    name, abs(n["difference"]) <= n["tolerance"], n, f"|{first} - {second}| <= max(2 seed-stds, 1)"
  )


def _white_helps(by, linear: str, white: str, ratio: str) -> dict:
  n = compare(by, white, linear)
  return _claim(
    f"White noise improves linear scaling at {ratio} (Jaiswal & Taura: +1.8 to +3.2 points)",
    n["difference"] > 0 and _significant(n),
    n,
    f"{white} - {linear} > 0 with Welch p < {SIGNIFICANT}",
  )


def _distance_claims(rows: Sequence[dict]) -> list[dict]:
  fitted = {
    r["variant"]: r["weight_distance_r2"]
    for r in rows
    if r["variant"] in DISTANCE_ROWS and r["weight_distance_r2"] is not None
  }
  out = []
  if fitted:
    worst = min(fitted, key=fitted.get)
    out.append(
      _claim(
        "||w - w0|| grows linearly in log t in the initial lr phase",
        fitted[worst] >= R2_MIN,
        {"r2": fitted, "lowest": worst},
        f"R^2 of the log fit >= {R2_MIN} for each of {', '.join(DISTANCE_ROWS)}",
      )
    )
  distance = {r["variant"]: r["weight_distance"] for r in rows if r["weight_distance"] is not None}
  short = [v for v in ("lb", "lb+lr", "lb+lr+gbn") if v in distance]
  if "sb" in distance and short:
    out.append(
      _claim(
        "LB, +LR and +GBN end short of SB's ||w - w0||",
        max(distance[v] for v in short) < distance["sb"],
        {v: distance[v] for v in ("sb", *short)},
        "final ||w - w0|| of each < SB's",
      )
    )
  return out


def _covariance_claim(rows: Sequence[dict]) -> list[dict]:
  ratio = {r["variant"]: r["covariance_ratio"] for r in rows if r.get("covariance_ratio")}
  sizes = {row["variant"]: row["batch_size"] for row in rows if row["batch_size"]}
  r = sizes["lb"] / sizes["sb"] if {"lb", "sb"} <= set(sizes) else None
  expected = {"lb": 1 / r if r else None, "lb+lr": 1.0, "lb+mult": 1.0}
  checked = {v: ratio[v] for v in expected if v in ratio and expected[v]}
  if not checked:
    return []
  return [
    _claim(
      "Update covariance at w0 relative to SB: LB about 1/r, +LR and +mult about 1",
      all(0.5 * expected[v] <= checked[v] <= 2 * expected[v] for v in checked),
      {"ratio": checked, "expected": {v: expected[v] for v in checked}},
      "each measured ratio within a factor 2 of the expected (Hoffer eq. 6)",
    )
  ]


# (rows needed, claim) in the order the table prints them.
PAIRWISE = (
  (("sb", "sb@2x"), _converged),
  (("sb", "lb"), _lb_below),
  (("lb", "lb+lr"), _lr_above),
  (("lb+lr", "lb+lr+gbn"), lambda by: _not_below(by, "lb+lr+gbn", "lb+lr", " (paper: +0.05)")),
  (("sb", "lb+lr+gbn+ra"), _ra_closes),
  (
    ("lb+lr+ra", "lb+lr+gbn+ra"),
    lambda by: _not_below(by, "lb+lr+gbn+ra", "lb+lr+ra", ": Ghost BN beyond RA"),
  ),
  # Kosson, Fan & Jaggi 2024: Ghost Noise Injection generalizes at least as well as Ghost BN.
  (
    ("lb+lr+gbn", "lb+lr+gni"),
    lambda by: _not_below(by, "lb+lr+gni", "lb+lr+gbn", " (Kosson et al.: GNI at least GBN)"),
  ),
  (
    ("lb+lr+gbn+ra", "lb+lr+gni+ra"),
    lambda by: _not_below(by, "lb+lr+gni+ra", "lb+lr+gbn+ra", " (Kosson et al., with RA)"),
  ),
  (
    ("sb", "lb+lr+gni+ra"),
    lambda by: _similar(
      by, "lb+lr+gni+ra", "sb", "+GNI+RA closes the gap: within max(2 seed-stds, 1 point) of SB"
    ),
  ),
  (
    ("lb+lr+ra", "lb+lr+gni+ra"),
    lambda by: _not_below(by, "lb+lr+gni+ra", "lb+lr+ra", ": GNI beyond RA"),
  ),
  (
    ("lb+lr+ra", "lb+mult+ra"),
    lambda by: _similar(
      by, "lb+mult+ra", "lb+lr+ra", "+mult+RA similar to +LR+RA (Hoffer sec. 4)"
    ),
  ),
  (
    ("lb+linear", "lb+linear+white"),
    lambda by: _white_helps(by, "lb+linear", "lb+linear+white", "r = 16"),
  ),
  (
    ("lb+linear@r4", "lb+linear+white@r4"),
    lambda by: _white_helps(by, "lb+linear@r4", "lb+linear+white@r4", "r = 4"),
  ),
)  # fmt: skip


def claims(rows: Sequence[dict]) -> list[dict]:
  """Every claim whose rows were measured (see the module docstring)."""
  by = {r["variant"]: r for r in rows if r["test_accuracy_mean"] is not None}
  out = [claim(by) for needed, claim in PAIRWISE if all(v in by for v in needed)]
  return out + _distance_claims(rows) + _covariance_claim(rows)
