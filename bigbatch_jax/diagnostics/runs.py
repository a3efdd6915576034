"""Diagnostics of finished runs: rebuild a workdir's model, data and checkpoints.

The model-agnostic functions of this package take closures and pytrees; the
helpers here build those closures for a run of ``bigbatch_jax.training``
(config.json, the dataset, the model with its GhostBatchNorm layers, and the
parameters of ``checkpoints/``).

Batch normalization, which the diagnostics must choose: losses and
gradients are taken in evaluation mode (running statistics frozen), so that
each is a deterministic function of the parameters alone
(:func:`eval_loss_fn`, :func:`eval_grad_fn`); interpolated networks get
statistics recomputed on training data (:func:`batch_stats_fn`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from bigbatch_jax import data as data_lib
from bigbatch_jax.ghost_batch_norm import GhostBatchNorm
from bigbatch_jax.protocol import resolve_protocol
from bigbatch_jax.training import plan as plan_lib
from bigbatch_jax.training import spec as spec_lib
from bigbatch_jax.training.checkpoint import Checkpointer
from bigbatch_jax.training.loss import correct, cross_entropy, eval_logits
from bigbatch_jax.training.setup import build_model, norm_layer


@dataclasses.dataclass(frozen=True)
class Run:
  """A finished (or checkpointed) run, rebuilt from its workdir.

  Attributes:
    workdir: the run's directory.
    config: its config.json as a ConfigDict.
    dataset: its dataset.
    plan: its RunPlan (on one device).
    spec: its resolved RunSpec (on one device); ``spec.plan`` is ``plan``.
    model: the model with evaluation-ready norm layers (no axis name).
    step: the checkpoint step loaded.
    params: parameters at ``step``.
    batch_stats: running batch-norm statistics at ``step``.
    initial_params: w0 of the run.
  """

  workdir: str
  config: ml_collections.ConfigDict
  dataset: data_lib.ArrayDataset
  plan: plan_lib.RunPlan
  spec: spec_lib.RunSpec
  model: Any
  step: int
  params: Any
  batch_stats: Any
  initial_params: Any


def _merge(defaults: dict, saved: dict) -> dict:
  merged = dict(defaults)
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(merged.get(key), dict):
      value = _merge(merged[key], value)
    merged[key] = value
  return merged


def read_config(
  workdir: str, defaults: ml_collections.ConfigDict | None = None
) -> ml_collections.ConfigDict:
  """The run config saved in ``workdir/config.json``.

  Args:
    workdir: a training workdir.
    defaults: optional current default config (e.g.
      ``bigbatch_jax.configs.get("default")``): keys added to
      the training system after the run was saved take their defaults.

  Returns:
    A ConfigDict.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} holds no config.json: is it a training workdir?")
  with open(path) as f:
    saved = json.load(f)
  if defaults is not None:
    saved = _merge(json.loads(defaults.to_json()), saved)
  return ml_collections.ConfigDict(saved)


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of the checkpoints kept in ``workdir/checkpoints``, ascending."""
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    return checkpointer.all_steps()
  finally:
    checkpointer.close()


def load_run(
  workdir: str,
  step: int | None = None,
  dataset: data_lib.ArrayDataset | None = None,
  defaults: ml_collections.ConfigDict | None = None,
) -> Run:
  """Rebuilds a run's config, dataset, plan and model and loads a checkpoint.

  Args:
    workdir: a training workdir (config.json and checkpoints/).
    step: the checkpoint step (None: the latest).
    dataset: the run's dataset, if already loaded (runs on the same data
      share it).
    defaults: optional current default config, for runs saved before keys
      were added (see :func:`read_config`).

  Returns:
    A :class:`Run`.
  """
  config = read_config(workdir, defaults)
  protocol = resolve_protocol(config)
  if dataset is None:
    dataset = data_lib.load_data(spec_lib.data_spec(config), protocol)
  spec = spec_lib.resolve(config, num_train=dataset.num_train, num_devices=1, protocol=protocol)
  model = build_model(spec, dataset.num_classes, norm_layer(spec, None))
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    steps = checkpointer.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
    if step is not None and step not in steps:
      raise ValueError(f"no checkpoint at step {step} in {workdir}; kept steps: {steps}")
    step = steps[-1] if step is None else step
    state = checkpointer.restore_raw(step)
  finally:
    checkpointer.close()
  to_jax = functools.partial(jax.tree.map, jnp.asarray)
  return Run(
    workdir=workdir,
    config=config,
    dataset=dataset,
    plan=spec.plan,
    spec=spec,
    model=model,
    step=int(step),
    params=to_jax(state["params"]),
    batch_stats=to_jax(state["batch_stats"]),
    initial_params=to_jax(state["initial_params"]),
  )


def sample_batches(
  dataset: data_lib.ArrayDataset,
  num_batches: int,
  batch_size: int,
  seed: int,
  split: str = "train",
  replace: bool = False,
) -> dict[str, jax.Array]:
  """Stacked batches ``{"x": (num_batches, batch_size, ...), "y": ...}`` of a split.

  Without ``replace`` the examples are a seeded permutation's first
  num_batches * batch_size (all distinct); with it, every example is drawn
  uniformly with replacement (the sampling under which McCandlish et al.'s
  estimator is exactly unbiased).

  Args:
    dataset: the dataset.
    num_batches: >= 1.
    batch_size: >= 1.
    seed: numpy seed of the draw.
    split: "train" or "test".
    replace: draw with replacement (examples may repeat).

  Returns:
    The stacked, normalized batches as jax arrays.
  """
  if num_batches < 1 or batch_size < 1:
    raise ValueError(f"num_batches and batch_size must be >= 1, got {num_batches}, {batch_size}")
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  x_all = dataset.x_train if split == "train" else dataset.x_test
  y_all = dataset.y_train if split == "train" else dataset.y_test
  rng = np.random.default_rng(seed)
  total = num_batches * batch_size
  if replace:
    index = rng.integers(0, len(y_all), (num_batches, batch_size))
  else:
    if total > len(y_all):
      raise ValueError(
        f"num_batches * batch_size = {total} exceeds the {len(y_all)} {split} examples"
      )
    index = rng.permutation(len(y_all))[:total].reshape(num_batches, batch_size)
  x = dataset.normalize(x_all[index.reshape(-1)])
  return {
    "x": jnp.asarray(x.reshape(num_batches, batch_size, *x.shape[1:])),
    "y": jnp.asarray(y_all[index]),
  }


def eval_loss_fn(model, batch_stats, batches: dict[str, jax.Array]):
  """params -> mean cross-entropy over fixed stacked batches, batch norm in evaluation mode.

  Evaluation mode (``train=False``): the running statistics are frozen, so
  the loss and its Hessian depend on the parameters only.
  """

  def loss_fn(params):
    def one(batch):
      return cross_entropy(eval_logits(model, params, batch_stats, batch["x"]), batch["y"])

    return jnp.mean(lax.map(one, batches))

  return loss_fn


def eval_grad_fn(model, batch_stats):
  """(params, batch) -> gradient of the batch-mean loss, batch norm in evaluation mode."""

  def loss(params, batch):
    return cross_entropy(eval_logits(model, params, batch_stats, batch["x"]), batch["y"])

  return jax.grad(loss)


def _whole_batch_model(run: Run):
  """The run's model with plain batch norm (no ghost batches, no noise) of momentum 0."""
  norm = functools.partial(
    GhostBatchNorm, ghost_batch_size=None, momentum=0.0, epsilon=run.spec.model.bn_epsilon
  )
  return build_model(run.spec, run.dataset.num_classes, norm)


def batch_stats_fn(run: Run):
  """(params, x) -> the batch-norm statistics of batch ``x`` (whole-batch, momentum 0).

  The run's model is rebuilt with plain batch norm (no ghost batches) of
  momentum 0, so one train-mode call sets each running statistic to the
  statistic of ``x`` exactly; the training-mode normalization of each layer
  uses its own batch statistics, as in training.
  """
  model = _whole_batch_model(run)

  def stats(params, x):
    _, updates = model.apply(
      {"params": params, "batch_stats": run.batch_stats},
      x,
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": jax.random.key(0)},
    )
    return updates["batch_stats"]

  return stats


def classification_metrics(model, params, batch_stats, batches) -> dict[str, jax.Array]:
  """Mean loss and accuracy over stacked batches in evaluation mode (jittable)."""

  def one(batch):
    logits = eval_logits(model, params, batch_stats, batch["x"])
    return cross_entropy(logits, batch["y"]), jnp.mean(correct(logits, batch["y"]))

  losses, accuracies = lax.map(one, batches)
  return {"loss": jnp.mean(losses), "accuracy": jnp.mean(accuracies)}


def _loaded(workdir: str | Run, step: int | None, defaults) -> Run:
  """``workdir``'s run at ``step``, or ``workdir`` itself when it is a loaded :class:`Run`."""
  if not isinstance(workdir, Run):
    return load_run(workdir, step, defaults=defaults)
  if step is not None and step != workdir.step:
    raise ValueError(f"step={step}: the run given is loaded at step {workdir.step}")
  return workdir


def top_hessian_eigenvalue_of_run(
  workdir: str | Run,
  *,
  step: int | None = None,
  num_batches: int = 4,
  batch_size: int = 256,
  num_iterations: int = 20,
  seed: int = 0,
  defaults: ml_collections.ConfigDict | None = None,
) -> float:
  """The largest Hessian eigenvalue of a run's training loss at a checkpoint.

  Lanczos (:func:`bigbatch_jax.diagnostics.hessian.hessian_top_eigenvalues`)
  on the mean cross-entropy over ``num_batches`` fixed training batches of
  ``batch_size`` (a seeded draw, the same for every run on the same data),
  batch norm in evaluation mode with the run's running statistics. Keskar et
  al. (2017): large-batch minima are sharper.

  Args:
    workdir: a training workdir, or its :class:`Run` already loaded
      (``load_run``; measurements of one run then share one restore).
    step: the checkpoint step (None: the latest, or the loaded run's).
    num_batches: fixed training batches, >= 1.
    batch_size: examples per batch, >= 1.
    num_iterations: Lanczos steps, >= 1.
    seed: seed of the batch draw and of the Lanczos start vector.
    defaults: optional current default config (see :func:`read_config`).

  Returns:
    The top eigenvalue as a float.
  """
  from bigbatch_jax.diagnostics.hessian import hessian_top_eigenvalues

  run = _loaded(workdir, step, defaults)
  batches = sample_batches(run.dataset, num_batches, batch_size, seed)

  # The statistics and batches are arguments, not constants of the program:
  # runs of one model compile the same program (the persistent cache's hit).
  def top(params, batch_stats, batches, key):
    loss_fn = eval_loss_fn(run.model, batch_stats, batches)
    return hessian_top_eigenvalues(loss_fn, params, key, k=1, num_iterations=num_iterations)

  return float(jax.jit(top)(run.params, run.batch_stats, batches, jax.random.key(seed))[0])


def scale_invariant_sq_norm_of_run(
  workdir: str | Run,
  *,
  step: int | None = None,
  batch_size: int = 256,
  seed: int = 0,
  defaults: ml_collections.ConfigDict | None = None,
) -> dict[str, Any]:
  """||w_SI||**2 of a run's parameters at a checkpoint, and which modules w_SI holds.

  w_SI: the parameters of the layers that batch norm makes scale invariant,
  found by measurement on one training batch of ``batch_size`` with the
  whole-batch statistics of training mode
  (:func:`bigbatch_jax.diagnostics.scale_invariance.scale_invariant_modules`).
  Multiplied by :func:`top_hessian_eigenvalue_of_run`, the sharpness that a
  joint rescaling of those layers leaves unchanged. ``workdir``: as for
  :func:`top_hessian_eigenvalue_of_run`.
  """
  from bigbatch_jax.diagnostics import scale_invariance

  run = _loaded(workdir, step, defaults)
  x = sample_batches(run.dataset, 1, min(batch_size, run.dataset.num_train), seed)["x"][0]
  model = _whole_batch_model(run)

  def logits(params, inputs):
    out, _ = model.apply(
      {"params": params, "batch_stats": run.batch_stats},
      inputs,
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": jax.random.key(0)},
    )
    return out

  modules = scale_invariance.scale_invariant_modules(jax.jit(logits), run.params, x)
  return {
    "scale_invariant_sq_norm": scale_invariance.squared_norm(run.params, modules),
    "scale_invariant_modules": ["/".join(m) for m in modules],
  }
