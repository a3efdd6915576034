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
from bigbatch_jax.training import json_files, parse_variant, population_grid
from bigbatch_jax.training.setup import build_model, norm_layer
from bigbatch_jax.training.spec import resolve
from experiments.analyze.compute import regime_update_fn
from experiments.table1.runner import finished, read_json

HESSIAN_FILE = "hessian.json"
# Earlier versions wrote "covariance.json" ({row: trace}, without the white
# noise, evaluation mode only) and "update_covariance.json" (warmup rows at
# their ramp's first rate, LARS/LAMB at rate 0): a new name, so that those
# numbers are not read back.
COVARIANCE_FILE = "update_covariance_traces.json"
COVARIANCE_MODES = ("evaluation", "training")
COVARIANCE_BATCHES = 64  # sampled updates per row: the trace's relative error is ~sqrt(2/64)


def top_hessian_eigenvalue(directory: str) -> dict[str, float]:
  """The run's sharpness, cached beside the run: lambda_max and lambda_max * ||w_SI||**2.

  lambda_max: the top Hessian eigenvalue (Keskar et al.). Under batch norm it
  scales as 1 / ||w||**2 along the scale-invariant layers, and the rows end
  at very different ||w||; ``scale_normalized_sharpness`` multiplies it by
  the squared norm of those layers (``bigbatch_jax.diagnostics.scale_invariance``).
  Both are measured on one restore of the run.
  """
  path = os.path.join(directory, HESSIAN_FILE)
  cached = read_json(path) if os.path.exists(path) else {}
  if "top_hessian_eigenvalue" in cached and "scale_invariant_sq_norm" in cached:
    return cached
  run = runs_lib.load_run(directory, defaults=default.get_config())
  if "top_hessian_eigenvalue" not in cached:
    # 4 fixed batches of up to 256 training examples (fewer on a small dataset).
    cached["top_hessian_eigenvalue"] = diagnostics.top_hessian_eigenvalue_of_run(
      run, batch_size=min(256, run.dataset.num_train // 4)
    )
  cached.update(runs_lib.scale_invariant_sq_norm_of_run(run))
  cached["scale_normalized_sharpness"] = (
    cached["top_hessian_eigenvalue"] * cached["scale_invariant_sq_norm"]
  )
  json_files.write_json_atomic(path, cached)
  return cached


def update_covariance_traces(
  configs: Mapping[str, ml_collections.ConfigDict], sb_directory: str, workdir: str
) -> dict[str, dict[str, float]]:
  """tr cov(dw) of each row's first update at SB's w0 (Hoffer eq. 6), cached in the workdir.

  Every row is measured at the same point, SB's initial parameters. A row's
  update is ``-lr_0 * gradient`` of its batch size, with its multiplicative
  noise weights and its white noise if any (see
  ``experiments.analyze.compute.regime_update_fn``), in two modes:

  * ``"evaluation"``: batch norm on the statistics of one training batch,
    frozen, so the per-example gradients are independent, as Hoffer eq. 6
    assumes: LB about 1/r and +LR about 1 hold there by construction, and
    Ghost BN cannot differ from BN;
  * ``"training"``: each row's own normalization in training mode on its
    real batches (whole-batch BN, ghost batches, ghost noise), so that the
    examples of a batch are coupled through its statistics, as in training.

  The rate is the one after any warmup (``update_lr``). LARS and LAMB rows
  are not measured: their trust ratio rescales each layer's gradient, so
  their update is not ``-lr * gradient`` and eq. 6 does not describe it.

  The driver divides each mode by SB's trace in the same mode.
  """
  path = os.path.join(workdir, COVARIANCE_FILE)
  cached = read_json(path) if os.path.exists(path) else {}
  cached = {mode: cached.get(mode, {}) for mode in COVARIANCE_MODES}
  sgd_rows = [row for row in configs if parse_variant(configs[row].variant).optimizer == "sgd"]
  todo = [row for row in sgd_rows if any(row not in cached[mode] for mode in COVARIANCE_MODES)]
  if todo and finished(sb_directory):
    run = runs_lib.load_run(sb_directory, defaults=default.get_config())
    probe = runs_lib.sample_batches(run.dataset, 1, min(1000, run.dataset.num_train), seed=0)
    stats = runs_lib.batch_stats_fn(run)(run.initial_params, probe["x"][0])
    for i, row in enumerate(todo):
      config = configs[row]
      spec = resolve(config, num_train=run.dataset.num_train, num_devices=1)
      plan = spec.plan
      batches = runs_lib.sample_batches(
        run.dataset, COVARIANCE_BATCHES, plan.batch_size, seed=1 + i, replace=True
      )
      white_noise = population_grid.white_noise(plan, {})
      row_model = build_model(spec, run.dataset.num_classes, norm_layer(spec, None))
      for mode, train_model in (("evaluation", None), ("training", row_model)):
        update_fn = regime_update_fn(plan, run.model, stats, white_noise, train_model)
        measure = jax.jit(functools.partial(diagnostics.update_covariance, update_fn))
        cached[mode][row] = float(measure(run.initial_params, batches, jax.random.key(i))["trace"])
    json_files.write_json_atomic(path, cached, indent=2)
  return {mode: {row: v[row] for row in sgd_rows if row in v} for mode, v in cached.items()}
