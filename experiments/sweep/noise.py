"""B_simple along the small-batch run (McCandlish et al. 2018, appendix A.1).

The sweep's own B_S run of the first seed is trained in stages: up to each
epoch of ``--noise_epochs`` (``config.stop_after_steps``, which checkpoints
the step reached), B_simple is measured at that checkpoint with per-example
gradients in evaluation mode (see ``bigbatch_jax.diagnostics.noise_scale``),
then the run continues. So the values describe the very run whose accuracy
is the curves' first point, not a separate probe. Each measurement is
recorded in ``WORKDIR/noise_scale.json`` as soon as it is made: a resumed
sweep skips the measured epochs and resumes the run from its last checkpoint.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import jax
import ml_collections

from bigbatch_jax import diagnostics
from bigbatch_jax.configs import default
from bigbatch_jax.diagnostics import runs as runs_lib
from bigbatch_jax.training import Checkpointer, json_files, make_plan
from bigbatch_jax.training.spec import load_data
from experiments.table1.devices import placed
from experiments.table1.runner import finished, read_json, run_all

NOISE_FILE = "noise_scale.json"
SMALL_BATCHES = 64  # |G_B|^2 is averaged over this many small batches before dividing
BIG_FACTOR = 8  # the big estimation batch is 8 x the small one, as experiments.analyze's default


def noise_steps(config: ml_collections.ConfigDict, num_train: int, epochs: Sequence[float]) -> list:
  """The update after which each epoch of ``epochs`` ends (the nearest whole update).

  Raises:
    ValueError: an epoch before the first update, or two epochs on one update.
  """
  plan = make_plan(config, num_train, num_devices=1)
  steps = [min(plan.num_steps, round(e * plan.steps_per_epoch)) for e in epochs]
  for e, s in zip(epochs, steps, strict=True):
    if s < 1:
      raise ValueError(f"--noise_epochs: epoch {e:g} ends before the first of its updates")
  if len(set(steps)) != len(steps):
    raise ValueError(
      f"--noise_epochs={','.join(f'{e:g}' for e in epochs)}: two epochs fall on one update "
      f"(updates {steps}, {plan.steps_per_epoch:g} per epoch); space them further apart"
    )
  return steps


def measure_at(directory: str, step: int, b_small: int, seed: int = 0) -> dict:
  """B_simple, |G|^2 and tr(Sigma) at the checkpoint of ``step`` in ``directory``."""
  run = runs_lib.load_run(directory, step=step, defaults=default.get_config())
  b_big = BIG_FACTOR * b_small
  small = runs_lib.sample_batches(run.dataset, SMALL_BATCHES, b_small, seed, replace=True)
  big = runs_lib.sample_batches(
    run.dataset, max(4, SMALL_BATCHES // BIG_FACTOR), b_big, seed + 1, replace=True
  )
  grad_fn = runs_lib.eval_grad_fn(run.model, run.batch_stats)
  out = jax.jit(functools.partial(diagnostics.measure_noise_scale, grad_fn))(run.params, small, big)
  record = {k: float(v) for k, v in out.items()}
  return record | {"step": run.step, "epoch": float(run.plan.epoch_at(run.step))}


def _recorded(path: str, directory: str, b_small: int) -> list[dict]:
  """The measurements already made along this run (none if the file is of another run)."""
  if not os.path.exists(path):
    return []
  cached = read_json(path)
  if cached.get("run") != directory or cached.get("b_small") != b_small:
    return []
  return list(cached["along"])


def _kept_steps(directory: str) -> list[int]:
  if not os.path.isdir(os.path.join(directory, "checkpoints")):
    return []
  checkpointer = Checkpointer(os.path.join(directory, "checkpoints"))
  try:
    return list(checkpointer.all_steps())
  finally:
    checkpointer.close()


def measure_along(
  row: str,
  config: ml_collections.ConfigDict,
  workdir: str,
  seed: int,
  epochs: Sequence[float],
  train_fn: Callable[[ml_collections.ConfigDict, str], dict],
  echo: Callable[[str], None],
  member_devices: int = 1,
) -> dict:
  """Trains ``row``'s run of ``seed`` in stages and measures B_simple at each of ``epochs``.

  Returns the record written to ``workdir/noise_scale.json``: the run, B_S,
  and ``along``, one ``{epoch, step, b_simple, grad_sq, trace_sigma, ...}``
  per epoch. The run's last stage is the runner's own (``run_all``, with
  ``member_devices``), so the finished run is the sweep's ``sb`` run of that
  seed, placed as the runner places a single run.
  """
  directory = os.path.join(workdir, row, f"seed_{seed}")
  path = os.path.join(workdir, NOISE_FILE)
  b_small = config.batch_size
  single = placed(config, 1, member_devices).copy_and_resolve_references()
  single.seed = seed
  num_train = load_data(single).num_train
  steps = noise_steps(single, num_train, epochs)
  num_steps = make_plan(single, num_train, num_devices=1).num_steps
  along = _recorded(path, directory, b_small)
  done = {r["step"] for r in along}
  for epoch, step in zip(epochs, steps, strict=True):
    if step in done:
      continue
    kept = _kept_steps(directory)
    if step in kept:
      pass  # trained to there already (a stop before the measurement, or a finished run)
    elif finished(directory) or (kept and kept[-1] > step):
      raise ValueError(
        f"{directory} is trained past update {step} (epoch {epoch:g}) and its checkpoint there is "
        f"gone, so B_simple cannot be measured there; delete {directory} and rerun"
      )
    elif step == num_steps:
      run_all({row: config}, [seed], workdir, train_fn, echo, member_devices=member_devices)
    else:
      echo(f"{row} seed {seed}: training to epoch {epoch:g} (update {step}) to measure B_simple")
      staged = single.copy_and_resolve_references()
      staged.stop_after_steps = step
      train_fn(staged, directory)
    record = measure_at(directory, step, b_small)
    along.append(record | {"requested_epoch": epoch})
    along.sort(key=lambda r: r["step"])
    document = {"run": directory, "b_small": b_small, "b_big": BIG_FACTOR * b_small}
    json_files.write_json_atomic(path, document | {"along": along}, indent=2)
    echo(
      f"B_simple = {record['b_simple']:.0f} at epoch {record['epoch']:g} (update {step}) of "
      f"{row} seed {seed} (|G|^2 {record['grad_sq']:.3g}, tr Sigma {record['trace_sigma']:.3g})"
    )
  document = read_json(path)
  # Only the epochs asked for now, in order (a file of an earlier request may hold others).
  document["along"] = [r for r in document["along"] if r["step"] in steps]
  return document
