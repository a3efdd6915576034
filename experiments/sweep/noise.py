"""B_simple early in the small-batch run (McCandlish et al. 2018, appendix A.1).

Measured at the probe run's checkpoint (the ``sb`` run stopped after
``probe_epochs``), with per-example gradients in evaluation mode (see
``bigbatch_jax.diagnostics.noise_scale``), and cached in the workdir so a
resumed sweep measures it once.
"""

from __future__ import annotations

import functools
import os

import jax

from bigbatch_jax import diagnostics
from bigbatch_jax.configs import default
from bigbatch_jax.diagnostics import runs as runs_lib
from bigbatch_jax.training import json_files
from experiments.table1.runner import read_json

NOISE_FILE = "noise_scale.json"
SMALL_BATCHES = 64  # |G_B|^2 is averaged over this many small batches before dividing
BIG_FACTOR = 8  # the big estimation batch is 8 x the small one, as experiments.analyze's default


def measure_b_simple(probe_directory: str, workdir: str, b_small: int, seed: int = 0) -> dict:
  """B_simple, |G|^2 and tr(Sigma) at the probe's last checkpoint; cached in ``workdir``."""
  path = os.path.join(workdir, NOISE_FILE)
  if os.path.exists(path):
    cached = read_json(path)
    if cached.get("probe") == probe_directory and cached.get("b_small") == b_small:
      return cached
  run = runs_lib.load_run(probe_directory, defaults=default.get_config())
  b_big = BIG_FACTOR * b_small
  small = runs_lib.sample_batches(run.dataset, SMALL_BATCHES, b_small, seed, replace=True)
  big = runs_lib.sample_batches(
    run.dataset, max(4, SMALL_BATCHES // BIG_FACTOR), b_big, seed + 1, replace=True
  )
  grad_fn = runs_lib.eval_grad_fn(run.model, run.batch_stats)
  out = jax.jit(functools.partial(diagnostics.measure_noise_scale, grad_fn))(run.params, small, big)
  record = {k: float(v) for k, v in out.items()}
  epoch = float(run.plan.epoch_at(run.step))
  record |= {"probe": probe_directory, "step": run.step, "epoch": epoch}
  json_files.write_json_atomic(path, record, indent=2)
  return record
