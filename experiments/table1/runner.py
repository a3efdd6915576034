"""Runs every (row, seed) of the table not yet finished, resumably, with progress lines.

A finished run (its ``summary.json`` says the planned updates were trained
and recorded) or a diverged one (a ``failed.json``) is not run again; any other
run (stopped by ``stop_after_steps``, a signal or a crash, or with a damaged
``summary.json``) resumes from its last checkpoint. A finished run whose
config differs from the one the flags now give is refused, so a table never
mixes two configs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from bigbatch_jax.training import json_files
from bigbatch_jax.training.workdir import config_changes
from experiments.table1 import population_runs
from experiments.table1.devices import placed

# Per run: the driver's measure of the whole run's wall time.
RUN_TIME_FILE = "run_time.json"


def run_dir(workdir: str, row: str, seed: int) -> str:
  return os.path.join(workdir, row, f"seed_{seed}")


def read_json(path: str) -> Any:
  """The JSON in ``path``; a damaged file raises ``ValueError`` naming it and what to do."""
  return json_files.read_json(
    path, "Delete it and rerun the same command: the run is resumed or measured again"
  )


def finished(directory: str) -> bool:
  """Whether the run in ``directory`` trained all its planned updates and recorded them."""
  path = os.path.join(directory, "summary.json")
  if not os.path.exists(path):
    return False
  try:
    summary = json_files.read_json(path)
  except ValueError:
    return False  # torn or emptied: the run is resumed and writes it again
  return isinstance(summary, dict) and summary.get("finished") is True


def check_same_config(config: ml_collections.ConfigDict, directory: str) -> None:
  """Refuses to reuse a finished run made with a different config."""
  changes = config_changes(config, directory)
  if changes:
    raise ValueError(
      f"{directory} holds a finished run of a different config ({'; '.join(changes)}). Use "
      "another "
      "--workdir, or delete that run directory to re-run it"
    )


def _run_one(config: ml_collections.ConfigDict, directory: str, head: str, train_fn, echo) -> bool:
  """Trains one run; a diverged run is recorded in ``failed.json``. Returns whether it ran."""
  run_start = time.perf_counter()
  try:
    summary = train_fn(config, directory)
  except FloatingPointError as e:
    # A diverged run is a result (the table says so), not a crash of the driver.
    os.makedirs(directory, exist_ok=True)
    failure = {"variant": config.variant, "seed": config.seed, "error": str(e)}
    json_files.write_json_atomic(os.path.join(directory, "failed.json"), failure, indent=2)
    echo(f"{head}: diverged: {e}")
    return True
  if not summary.get("finished"):
    echo(
      f"{head}: stopped after {summary['trained_updates']} of {summary['updates']} updates "
      "(not counted); rerun the same command to resume it"
    )
    return True
  # The whole run's time (data, compilation, checkpoints), not only the loop's.
  run_time = time.perf_counter() - run_start
  json_files.write_json_atomic(os.path.join(directory, RUN_TIME_FILE), {"wall_time_s": run_time})
  echo(
    f"{head}: test accuracy {100 * summary['test_accuracy']:.2f}%, "
    f"{summary['updates']} updates, {run_time:.0f} s"
  )
  return True


def run_all(
  configs: Mapping[str, ml_collections.ConfigDict],
  seeds: Sequence[int],
  workdir: str,
  train_fn: Callable[[ml_collections.ConfigDict, str], dict],
  echo: Callable[[str], None],
  population: bool = True,
  member_devices: int = 1,
) -> int:
  """Runs each (row, seed) not yet done in ``workdir/ROW/seed_N``; returns how many ran.

  With ``population`` a row's pending seeds (two or more) train as one
  population (``population_runs.run_population``), split into the same
  ``seed_N`` directories; without it, one run per seed. With
  ``member_devices`` > 1 every run is placed on CPU devices (``devices.placed``):
  a population's members split over up to that many, a single run on one.
  """
  os.makedirs(workdir, exist_ok=True)
  jobs = [(row, s) for row in configs for s in seeds]
  start = time.perf_counter()
  ran = 0
  pending: dict[str, list[int]] = {}
  for i, (row, seed) in enumerate(jobs, 1):
    config = placed(configs[row], 1, member_devices).copy_and_resolve_references()
    config.seed = seed
    directory = run_dir(workdir, row, seed)
    head = f"[{i}/{len(jobs)}] {row} seed {seed}"
    if finished(directory) or os.path.exists(os.path.join(directory, "failed.json")):
      check_same_config(config, directory)
      echo(f"{head}: done before, skipped")
      continue
    if population:
      pending.setdefault(row, []).append(seed)
      continue
    echo(f"{head} ({time.perf_counter() - start:.0f} s elapsed)")
    ran += _run_one(config, directory, head, train_fn, echo)
  rows = list(configs)
  for row, row_seeds in pending.items():
    seed_word = "seed" if len(row_seeds) == 1 else "seeds"
    head = f"[{rows.index(row) + 1}/{len(rows)}] {row} {seed_word} {','.join(map(str, row_seeds))}"
    row_config = placed(configs[row], len(row_seeds), member_devices)
    if row_config.member_devices > 1:
      head += f" over {row_config.member_devices} devices"
    echo(f"{head} ({time.perf_counter() - start:.0f} s elapsed)")
    if len(row_seeds) == 1:
      config = row_config.copy_and_resolve_references()
      config.seed = row_seeds[0]
      ran += _run_one(config, run_dir(workdir, row, row_seeds[0]), head, train_fn, echo)
    else:
      directory = population_runs.population_dir(workdir, row, row_seeds)
      directories = {s: run_dir(workdir, row, s) for s in row_seeds}
      ran += population_runs.run_population(
        row_config, directory, directories, train_fn, echo, head, RUN_TIME_FILE
      )
  return ran
