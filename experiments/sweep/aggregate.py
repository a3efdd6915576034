"""The sweep's numbers: test accuracy per (curve, batch size), B_simple, where the gap opens.

Everything the figure shows is in ``sweep.json``; the figure is drawn from
that file alone (``experiments.sweep.figure.draw``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from bigbatch_jax.training import json_files
from experiments.sweep.grid import PLAIN, row
from experiments.table1.aggregate import std
from experiments.table1.runner import finished, read_json, run_dir

JSON_FILE = "sweep.json"


def _accuracies(workdir: str, name: str, seeds: Sequence[int]) -> tuple[list[float], int]:
  """The finished seeds' test accuracies (%) and how many seeds diverged."""
  values, diverged = [], 0
  for seed in seeds:
    directory = run_dir(workdir, name, seed)
    if finished(directory):
      values.append(100 * read_json(os.path.join(directory, "summary.json"))["test_accuracy"])
    elif os.path.exists(os.path.join(directory, "failed.json")):
      diverged += 1
  return values, diverged


def curve(workdir: str, variant: str, batch_sizes: Sequence[int], seeds: Sequence[int]) -> list:
  """One point per batch size; the first is the shared small-batch (``sb``) run."""
  points = []
  for i, b in enumerate(batch_sizes):
    values, diverged = _accuracies(workdir, row("sb" if i == 0 else variant, b), seeds)
    mean = sum(values) / len(values) if values else None
    points.append(
      {
        "batch_size": b,
        "test_accuracy": mean,
        "std": std(values) if values else None,
        "seeds": values,
        "diverged": diverged,
      }
    )
  return points


def gap_onset(points: Sequence[Mapping], threshold: float) -> int | None:
  """The smallest batch whose accuracy is ``threshold`` points or more below the first's.

  A diverged or missing point counts as below. None: no batch size opens a gap.
  """
  first = points[0]["test_accuracy"]
  if first is None:
    return None
  for p in points[1:]:
    if p["test_accuracy"] is None or p["test_accuracy"] <= first - threshold:
      return p["batch_size"]
  return None


def summarize(
  workdir: str,
  batch_sizes: Sequence[int],
  remedy: str,
  seeds: Sequence[int],
  noise: Mapping | None,
  threshold: float,
  setup: Mapping,
) -> dict:
  """The sweep's JSON document (see the module docstring)."""
  curves = {v: curve(workdir, v, batch_sizes, seeds) for v in (PLAIN, remedy)}
  return {
    "setup": dict(setup),
    "seeds": list(seeds),
    "batch_sizes": list(batch_sizes),
    "curves": curves,
    "gap_threshold": threshold,
    "gap_onset": {v: gap_onset(points, threshold) for v, points in curves.items()},
    "noise_scale": dict(noise) if noise else None,
  }


def write(summary: Mapping, workdir: str) -> str:
  path = os.path.join(workdir, JSON_FILE)
  json_files.write_json_atomic(path, summary, indent=2)
  return path
