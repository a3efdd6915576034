"""The table's numbers: one row per variant from its runs' summaries and metric logs.

Everything here is computed from files and returned as JSON-ready dicts;
nothing is drawn (``figures`` draws from these numbers).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bigbatch_jax.statistics import mean_ci95
from bigbatch_jax.training import fit_log_growth
from bigbatch_jax.training.metrics import read_metrics
from experiments.table1.measures import HESSIAN_FILE
from experiments.table1.paper_claims import welch_p
from experiments.table1.rows import label
from experiments.table1.runner import RUN_TIME_FILE, finished, read_json, run_dir

CURVES = ("error_step", "error_epoch", "distance", "initial_distance")
# The update-covariance modes of ``measures.update_covariance_traces`` and the
# row keys of their ratios to SB.
NORMALIZED = "scale_normalized_sharpness"
COVARIANCE_COLUMNS = {"evaluation": "covariance_ratio", "training": "covariance_ratio_training"}


def finite(v: Any) -> bool:
  return isinstance(v, int | float) and math.isfinite(v)


def std(values: Sequence[float]) -> float:
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def run_curves(records: Sequence[dict]) -> dict[str, dict[float, float]]:
  """A run's curves: test error by step and by epoch, ||w - w0|| by step, time by step.

  ``initial_distance`` is ||w - w0|| during the initial high learning-rate
  phase (until the first drop of the logged lr), where Hoffer et al. observe
  the logarithmic growth (section 3, Figure 2a). ``time`` is the training
  time to each logged step, integrated from the logged throughput (the
  loop's own time: evaluation and compilation excluded).
  """
  curves: dict[str, dict[float, float]] = {k: {} for k in (*CURVES, "time")}
  initial_lr, last_step, elapsed = None, 0, 0.0
  for r in records:
    if finite(r.get("test_error")):
      curves["error_step"][r["step"]] = r["test_error"]
      curves["error_epoch"][round(r["epoch"], 6)] = r["test_error"]
    if finite(r.get("examples_per_sec")) and r["examples_per_sec"] > 0:
      elapsed += (r["step"] - last_step) * r["batch_size"] / r["examples_per_sec"]
      last_step = r["step"]
      curves["time"][r["step"]] = elapsed
    if finite(r.get("weight_distance")) and r["step"] > 0:
      curves["distance"][r["step"]] = r["weight_distance"]
      lr = r.get("lr")
      initial_lr = lr if initial_lr is None else initial_lr
      if lr is None or initial_lr is None or lr >= initial_lr * (1 - 1e-6):
        curves["initial_distance"][r["step"]] = r["weight_distance"]
  return curves


def mean_curve(curves: Sequence[Mapping[float, float]]) -> tuple[list[float], list[float]]:
  """The pointwise mean of per-seed curves over the x values they all have."""
  if not curves:
    return [], []
  xs = sorted(set.intersection(*(set(c) for c in curves)))
  return [float(x) for x in xs], [float(np.mean([c[x] for c in curves])) for x in xs]


def _read_runs(workdir: str, row: str, seeds: Sequence[int]) -> dict[str, list]:
  """The finished runs' summaries, times, sharpness and curves; diverged and missing seeds."""
  out = {k: [] for k in ("summaries", "times", "sharpness", "curves", "diverged", "missing")}
  for seed in seeds:
    directory = run_dir(workdir, row, seed)
    if finished(directory):
      summary = read_json(os.path.join(directory, "summary.json"))
      out["summaries"].append(summary)
      timing = os.path.join(directory, RUN_TIME_FILE)
      out["times"].append(read_json(timing) if os.path.exists(timing) else summary)
      if os.path.exists(os.path.join(directory, HESSIAN_FILE)):
        out["sharpness"].append(read_json(os.path.join(directory, HESSIAN_FILE)))
      out["curves"].append(run_curves(read_metrics(directory)))
    elif os.path.exists(os.path.join(directory, "failed.json")):
      out["diverged"].append(seed)
    else:
      out["missing"].append(seed)
  return out


def _first(summaries: Sequence[dict], key: str) -> Any:
  return summaries[0][key] if summaries else None


def _mean(values: Sequence[float]) -> float | None:
  return float(np.mean(values)) if values else None


def row_numbers(workdir: str, row: str, seeds: Sequence[int]) -> dict:
  """One row: accuracy (%: mean, std, 95% CI of the mean, per seed), sizes, time, ||w - w0||."""
  runs = _read_runs(workdir, row, seeds)
  summaries = runs["summaries"]
  accuracies = [100 * s["test_accuracy"] for s in summaries if finite(s["test_accuracy"])]
  distances = [s["weight_distance"] for s in summaries if finite(s["weight_distance"])]
  out: dict[str, Any] = {
    "variant": row,
    "label": label(row),
    "test_accuracy_mean": _mean(accuracies),
    "test_accuracy_std": std(accuracies) if accuracies else None,
    "test_accuracy_ci95": None if len(accuracies) < 2 else list(mean_ci95(accuracies)),
    "test_accuracy_per_seed": accuracies,
    "seeds": [s["seed"] for s in summaries],
    "diverged_seeds": runs["diverged"],
    "missing_seeds": runs["missing"],
    # Updates dropped for a non-finite loss or gradient (nonfinite_policy="skip"), all seeds.
    "skipped_updates": sum(s.get("skipped_steps", 0) for s in summaries),
    **{k: _first(summaries, k) for k in ("updates", "epochs", "batch_size", "lr")},
    "wall_time_s": _mean([t["wall_time_s"] for t in runs["times"]]),
    "weight_distance": _mean(distances),
    "weight_distance_slope": None,
    "weight_distance_r2": None,
    "top_hessian_eigenvalue": _mean([h["top_hessian_eigenvalue"] for h in runs["sharpness"]]),
    NORMALIZED: _mean([h[NORMALIZED] for h in runs["sharpness"] if NORMALIZED in h]),
    "curves": {k: mean_curve([c[k] for c in runs["curves"]]) for k in (*CURVES, "time")},
  }
  steps, dist = out["curves"]["initial_distance"]
  if len(steps) >= 2:
    fit = fit_log_growth(np.asarray(steps), np.asarray(dist))
    out["weight_distance_slope"], out["weight_distance_r2"] = fit["slope"], fit["r2"]
    out["weight_distance_intercept"] = fit["intercept"]
  return out


def time_to_target(row: dict, target_accuracy: float) -> dict:
  """Updates and training time until the seed-mean test accuracy first reaches the target.

  ``None`` values mean "never" (the row's curve stays below the target).
  The time is interpolated on the logged training-time curve.
  """
  steps, errors = row["curves"]["error_step"]
  reached = [s for s, e in zip(steps, errors) if 100 * (1 - e) >= target_accuracy - 1e-9]
  if not reached:
    return {"updates_to_sb": None, "time_to_sb_s": None}
  step = reached[0]
  t_steps, t_values = row["curves"]["time"]
  seconds = float(np.interp(step, [0.0, *t_steps], [0.0, *t_values])) if t_steps else None
  return {"updates_to_sb": int(step), "time_to_sb_s": seconds}


def p_values_against(row: dict, by_variant: Mapping[str, dict]) -> dict:
  """Welch p of ``row`` against SB and against LB: ``p_vs_sb``, ``p_vs_lb`` (None where absent)."""
  out = {}
  for reference in ("sb", "lb"):
    other = by_variant.get(reference)
    same = other is None or other["variant"] == row["variant"]
    p = None if same else welch_p(row["test_accuracy_per_seed"], other["test_accuracy_per_seed"])
    out[f"p_vs_{reference}"] = p
  return out


def aggregate(
  workdir: str,
  rows: Sequence[str],
  seeds: Sequence[int],
  paper_accuracy: Mapping[str, float] | None = None,
  covariance: Mapping[str, Mapping[str, float]] | None = None,
) -> list[dict]:
  """The table's rows (see :func:`row_numbers`) with the columns that compare to SB.

  ``updates_to_sb`` / ``time_to_sb_s``: when the row's seed-mean accuracy
  first reaches SB's final mean accuracy. ``covariance_ratio``: the row's
  update-covariance trace at w0 over SB's, batch norm in evaluation mode;
  ``covariance_ratio_training``: the same in training mode (``measures``;
  ``covariance`` maps each mode to the rows' traces). ``p_vs_sb`` /
  ``p_vs_lb``: Welch's p-value of the row's per-seed accuracies against SB's
  and LB's (None for the row itself, or with fewer than two seeds).
  ``paper_accuracy``: the paper's number, when given (the dataset is the paper's).
  """
  out = [row_numbers(workdir, row, seeds) for row in rows]
  by_variant = {r["variant"]: r for r in out}
  sb = by_variant.get("sb")
  covariance = covariance or {}
  for r in out:
    r.update(p_values_against(r, by_variant))
    if sb is not None and sb["test_accuracy_mean"] is not None:
      r.update(time_to_target(r, sb["test_accuracy_mean"]))
    for mode, key in COVARIANCE_COLUMNS.items():
      traces = covariance.get(mode, {})
      if "sb" in traces and r["variant"] in traces:
        r[key] = traces[r["variant"]] / traces["sb"]
    if paper_accuracy is not None:
      r["paper_accuracy"] = paper_accuracy.get(r["variant"])
  return out
