"""Per-run measurements beyond training: sharpness, and each row's update noise at w0.

Both are cached in the run directory (``hessian.json``; ``covariance.json``
in the workdir), so a resumed table measures only what is new.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import jax
import ml_collections

from bigbatch_jax import diagnostics
from bigbatch_jax.configs import default
from bigbatch_jax.diagnostics import runs as runs_lib
from bigbatch_jax.training import json_files, make_plan
from experiments.analyze.compute import regime_update_fn
from experiments.table1.runner import finished, read_json

HESSIAN_FILE = "hessian.json"
COVARIANCE_FILE = "covariance.json"
COVARIANCE_BATCHES = 64  # sampled updates per row: the trace's relative error is ~sqrt(2/64)


def top_hessian_eigenvalue(directory: str) -> float:
  """The run's top Hessian eigenvalue (sharpness, Keskar et al.), cached beside the run."""
  path = os.path.join(directory, HESSIAN_FILE)
  if not os.path.exists(path):
    # 4 fixed batches of up to 256 training examples (fewer on a small dataset).
    num_train = read_json(os.path.join(directory, "summary.json"))["num_train"]
    value = diagnostics.top_hessian_eigenvalue_of_run(
      directory, batch_size=min(256, num_train // 4), defaults=default.get_config()
    )
    json_files.write_json_atomic(path, {"top_hessian_eigenvalue": value})
  return read_json(path)["top_hessian_eigenvalue"]


def update_covariance_traces(
  configs: Mapping[str, ml_collections.ConfigDict], sb_directory: str, workdir: str
) -> dict[str, float]:
  """tr cov(dw) of each row's first update at SB's w0 (Hoffer eq. 6), cached in the workdir.

  Every row is measured at the same point: SB's initial parameters, with
  batch-norm statistics of a training batch. A row's update is
  ``-lr_0 * gradient`` of its batch size, with its multiplicative noise
  weights if any (see ``experiments.analyze.compute.regime_update_fn``); the
  driver divides by SB's trace (LB about 1/r; +LR and +mult about 1).
  """
  path = os.path.join(workdir, COVARIANCE_FILE)
  cached = read_json(path) if os.path.exists(path) else {}
  todo = [row for row in configs if row not in cached]
  if not todo or not finished(sb_directory):
    return {row: cached[row] for row in configs if row in cached}
  run = runs_lib.load_run(sb_directory, defaults=default.get_config())
  probe = runs_lib.sample_batches(run.dataset, 1, min(1000, run.dataset.num_train), seed=0)
  stats = runs_lib.batch_stats_fn(run)(run.initial_params, probe["x"][0])
  for i, row in enumerate(todo):
    plan = make_plan(configs[row], run.dataset.num_train, num_devices=1)
    batches = runs_lib.sample_batches(
      run.dataset, COVARIANCE_BATCHES, plan.batch_size, seed=1 + i, replace=True
    )
    update_fn = regime_update_fn(plan, run.model, stats)
    measure = jax.jit(functools.partial(diagnostics.update_covariance, update_fn))
    cached[row] = float(measure(run.initial_params, batches, jax.random.key(i))["trace"])
  json_files.write_json_atomic(path, cached, indent=2)
  return {row: cached[row] for row in configs if row in cached}
