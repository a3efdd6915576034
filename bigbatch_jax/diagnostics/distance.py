"""Weight distance from initialization and its fit against log t (Hoffer eq. 4, Figure 2).

The per-step distances are computed inside the training step
(``bigbatch_jax.training.step.weight_distances``) and logged to
``metrics.jsonl``; this module re-exports them and fits finished runs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import jax

from bigbatch_jax.training.metrics import fit_log_growth, read_metrics
from bigbatch_jax.training.step import weight_distances
from bigbatch_jax.transforms import tree_distance

__all__ = [
  "fit_log_growth",
  "fit_weight_distance",
  "weight_distance",
  "weight_distance_series",
  "weight_distances",
]


def weight_distance(params, initial_params) -> jax.Array:
  """||w - w0|| over all leaves of two parameter pytrees (Hoffer eq. 4).

  Args:
    params: the current parameters w.
    initial_params: the initial parameters w0, with the same tree structure.

  Returns:
    A float32 scalar. For the per-layer distances use :func:`weight_distances`.
  """
  if jax.tree.structure(params) != jax.tree.structure(initial_params):
    raise ValueError(
      "params and initial_params must have the same tree structure, got "
      f"{jax.tree.structure(params)} and {jax.tree.structure(initial_params)}"
    )
  return tree_distance(params, initial_params)


def weight_distance_series(path: str, key: str = "weight_distance") -> tuple[list, list]:
  """The logged (step, distance) pairs of a run, step > 0 and finite.

  Args:
    path: a run's ``metrics.jsonl``, or its workdir.
    key: the logged series, ``weight_distance`` or e.g. ``weight_distance/fc1``.

  Returns:
    ``(steps, distances)`` as lists of floats.
  """
  steps, distances = [], []
  for record in read_metrics(path):
    value = record.get(key)
    if isinstance(value, int | float) and math.isfinite(value) and record["step"] > 0:
      steps.append(float(record["step"]))
      distances.append(float(value))
  return steps, distances


def fit_weight_distance(
  source: str | Sequence[float],
  distances: Sequence[float] | None = None,
  *,
  key: str = "weight_distance",
  max_step: float | None = None,
) -> dict[str, float]:
  """Fits ||w_t - w0|| = slope * log t + intercept over a run or arrays (Hoffer eq. 4).

  Hoffer et al. (section 3.1, Figure 2) fit the initial training phase, before
  the first learning-rate drop: pass ``max_step`` to restrict the fit to it.

  Args:
    source: a ``metrics.jsonl`` path or a workdir; or the steps t (> 0) when
      ``distances`` is given.
    distances: ||w_t - w0|| at the steps in ``source``; None to read a file.
    key: the logged series to fit, when reading a file.
    max_step: only fit points with t <= max_step (None: all).

  Returns:
    ``slope``, ``intercept``, ``r2`` and ``num_points``.
  """
  if distances is None:
    if not isinstance(source, str | os.PathLike):
      raise ValueError("pass distances with an array of steps, or a metrics.jsonl path alone")
    steps, distances = weight_distance_series(os.fspath(source), key)
  else:
    steps = list(source)
    distances = list(distances)
  if max_step is not None:
    if not max_step > 0:
      raise ValueError(f"max_step must be > 0, got {max_step}")
    kept = [(t, d) for t, d in zip(steps, distances) if t <= max_step]
    steps, distances = [t for t, _ in kept], [d for _, d in kept]
  fit = fit_log_growth(steps, distances)
  fit["num_points"] = len(steps)
  return fit
