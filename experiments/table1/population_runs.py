"""A row's seeds trained as one population and written back as one directory per seed.

The table's aggregation reads ``ROW/seed_N`` directories; a population trains
in ``ROW/population_S1-S2-...`` (resumable like any run) and, once finished,
each member is written as the single run of its seed
(``bigbatch_jax.training.members.split_population``), with the population's
wall time shared equally among the members.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import ml_collections

from bigbatch_jax.training import json_files
from bigbatch_jax.training.members import split_population
from bigbatch_jax.training.metrics import member_label


def population_dir(workdir: str, row: str, seeds: Sequence[int]) -> str:
  """Where the population of ``row``'s ``seeds`` trains."""
  return os.path.join(workdir, row, "population_" + "-".join(map(str, seeds)))


def run_population(
  row_config: ml_collections.ConfigDict,
  directory: str,
  directories: dict[int, str],
  train_fn: Callable[[ml_collections.ConfigDict, str], dict],
  echo: Callable[[str], None],
  head: str,
  run_time_file: str,
) -> int:
  """Trains the seeds of ``directories`` (seed -> its run directory) as one population.

  The population trains in ``directory``; each member is then written to its
  seed's directory, with ``run_time_file`` holding its share of the wall
  time. Returns the runs done (the number of seeds).
  """
  seeds = list(directories)
  config = row_config.copy_and_resolve_references()
  config.seed = seeds[0]
  config.seeds = tuple(seeds)
  run_start = time.perf_counter()
  try:
    summary = train_fn(config, directory)
  except FloatingPointError as e:
    # Every member diverged: each seed is a diverged run, as in the single-run path.
    for seed, member_dir in directories.items():
      os.makedirs(member_dir, exist_ok=True)
      failure = {"variant": config.variant, "seed": seed, "error": str(e)}
      json_files.write_json_atomic(os.path.join(member_dir, "failed.json"), failure, indent=2)
    echo(f"{head}: every member diverged: {e}")
    return len(seeds)
  run_time = time.perf_counter() - run_start
  split_population(directory, directories)
  for member_dir in directories.values():
    if os.path.exists(os.path.join(member_dir, "summary.json")):
      share = {"wall_time_s": run_time / len(seeds)}
      json_files.write_json_atomic(os.path.join(member_dir, run_time_file), share)
  lines = [
    f"{member_label(m['seed'], m.get('hyperparameters'))}: "
    + (
      "diverged"
      if "diverged" in m
      else "stopped before its planned updates"
      if m.get("test_accuracy") is None
      else f"test accuracy {100 * m['test_accuracy']:.2f}%"
    )
    for m in summary["members"]
  ]
  echo(f"{head}: {'; '.join(lines)}; {summary['updates']} updates, {run_time:.0f} s")
  return len(seeds)
