"""The numbers of the run diagnostics: sharpness, interpolation, landscape, noise scale.

Each function returns a JSON-ready dict and draws nothing (``figures`` draws
from these dicts). Losses and gradients use batch norm in evaluation mode
(see bigbatch_jax.diagnostics.runs).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging

from bigbatch_jax import diagnostics
from bigbatch_jax.configs import default
from bigbatch_jax.diagnostics import runs as runs_lib
from bigbatch_jax.ghost_noise import RNG_COLLECTION as GHOST_NOISE_RNG
from bigbatch_jax.noise import multiplicative_noise_weights
from bigbatch_jax.training import plan as plan_lib
from bigbatch_jax.training import population_grid
from bigbatch_jax.training.loss import cross_entropy, eval_logits
from bigbatch_jax.transforms import add_decaying_noise

DIAGNOSTICS = ("sharpness", "interpolation", "landscape", "noise_scale")


@dataclasses.dataclass(frozen=True)
class Options:
  """Sizes of the diagnostics (the flags of the same names)."""

  num_batches: int = 4  # fixed training batches of the Hessian/sharpness/landscape loss
  batch_size: int = 256
  top_k: int = 3
  lanczos_iterations: int = 20
  epsilon: float = 1e-3  # Keskar et al.'s box size
  sharpness_steps: int = 10
  num_alphas: int = 25
  alpha_min: float = -1.0
  alpha_max: float = 2.0
  eval_examples: int = 2000  # per split, for interpolation
  landscape_samples: int = 1000
  landscape_bins: int = 20
  landscape_max_distance: float | None = None
  noise_small_batch: int | None = None  # None: the run's base batch size
  noise_big_batch: int | None = None  # None: 8 x noise_small_batch
  noise_batches: int = 64  # small batches per estimate (big: a quarter, at least 4)
  seed: int = 0


def parse_what(what: str | Sequence[str]) -> list[str]:
  """The requested diagnostics, validated, in the order given."""
  names = [w.strip() for w in what.split(",")] if isinstance(what, str) else list(what)
  names = [n for n in names if n]
  unknown = [n for n in names if n not in DIAGNOSTICS]
  if unknown or not names:
    raise ValueError(
      f"--what={what!r}: unknown diagnostic(s) {unknown}; valid: {', '.join(DIAGNOSTICS)}"
    )
  return names


def label(run: runs_lib.Run) -> str:
  return f"{run.plan.variant.name} (B={run.plan.batch_size})"


def _same_data(a, b) -> bool:
  keys = ("dataset", "mnist1d_num_samples", "data_seed")
  return all(a.get(k) == b.get(k) for k in keys)


class Loader:
  """Loads runs, sharing one dataset between runs of the same data."""

  def __init__(self):
    self._datasets = []

  def __call__(self, workdir: str, step: int | None = None) -> runs_lib.Run:
    # Runs saved before a config key was added get the key's current default.
    config = runs_lib.read_config(workdir, default.get_config())
    dataset = next((d for c, d in self._datasets if _same_data(c, config)), None)
    run = runs_lib.load_run(workdir, step, dataset, default.get_config())
    if dataset is None:
      self._datasets.append((config, run.dataset))
    return run


def sharpness(runs: list[runs_lib.Run], options: Options) -> dict:
  """Top Hessian eigenvalues and epsilon-sharpness of each run, on the same batches."""
  key = jax.random.key(options.seed)
  results = []
  for run in runs:
    batches = runs_lib.sample_batches(
      run.dataset, options.num_batches, options.batch_size, options.seed
    )
    loss_fn = runs_lib.eval_loss_fn(run.model, run.batch_stats, batches)
    top = jax.jit(
      functools.partial(
        diagnostics.hessian_top_eigenvalues,
        loss_fn,
        k=options.top_k,
        num_iterations=options.lanczos_iterations,
      )
    )(run.params, key)
    phi = jax.jit(
      functools.partial(
        diagnostics.epsilon_sharpness,
        loss_fn,
        epsilon=options.epsilon,
        num_steps=options.sharpness_steps,
      )
    )(run.params)
    results.append(
      {
        "workdir": run.workdir,
        "label": label(run),
        "variant": run.plan.variant.name,
        "batch_size": run.plan.batch_size,
        "step": run.step,
        "train_loss": float(loss_fn(run.params)),
        "top_eigenvalues": [float(v) for v in top],
        "epsilon_sharpness": float(phi),
      }
    )
    logging.info("sharpness %s: %s", run.workdir, results[-1])
  return {"epsilon": options.epsilon, "runs": results}


def interpolation(run_s: runs_lib.Run, run_l: runs_lib.Run, options: Options) -> dict:
  """Loss and accuracy along (1 - a) theta_S + a theta_L (Jaiswal & Taura Fig. 2)."""
  dataset = run_s.dataset
  bs = options.batch_size
  per_split = {}
  for split, total in (("train", dataset.num_train), ("test", dataset.num_test)):
    n = min(options.eval_examples, total) // bs
    if n < 1:
      raise ValueError(f"--eval_examples and the {split} split must hold >= --batch_size={bs}")
    per_split[split] = runs_lib.sample_batches(dataset, n, bs, options.seed, split)
  stats_fn = runs_lib.batch_stats_fn(run_s)
  model = run_s.model

  @jax.jit
  def evaluate(params):
    # Neither run's running statistics belong to theta(a): recompute them on
    # the training batches, then evaluate in evaluation mode.
    stats = diagnostics.recompute_batch_stats(stats_fn, params, per_split["train"]["x"])
    out = {}
    for split, batches in per_split.items():
      metrics = runs_lib.classification_metrics(model, params, stats, batches)
      out[f"{split}_loss"] = metrics["loss"]
      out[f"{split}_accuracy"] = metrics["accuracy"]
    return out

  alphas = np.linspace(options.alpha_min, options.alpha_max, options.num_alphas)
  return {
    "small_batch_workdir": run_s.workdir,
    "large_batch_workdir": run_l.workdir,
    "small_batch_label": label(run_s),
    "large_batch_label": label(run_l),
    "curve": diagnostics.interpolation_curve(evaluate, run_s.params, run_l.params, alphas),
  }


def _max_weight_distance(workdir: str) -> float:
  _, distances = diagnostics.weight_distance_series(workdir)
  if not distances:
    raise ValueError(
      f"{workdir}/metrics.jsonl has no weight_distance; pass --landscape_max_distance"
    )
  return max(distances)


def _floats(values) -> list:
  return [None if not np.isfinite(v) else float(v) for v in np.asarray(values).ravel()]


def landscape(run: runs_lib.Run, options: Options) -> dict:
  """Hoffer appendix B at the run's initialization w0."""
  c = options.landscape_max_distance
  if c is None:
    c = _max_weight_distance(run.workdir)
  if not c > 0:
    raise ValueError(f"the landscape's max distance must be > 0, got {c}")
  batches = runs_lib.sample_batches(
    run.dataset, options.num_batches, options.batch_size, options.seed
  )
  # Statistics of w0 on training data, then frozen along every direction.
  w0 = run.initial_params
  stats = jax.jit(
    functools.partial(diagnostics.recompute_batch_stats, runs_lib.batch_stats_fn(run))
  )(w0, batches["x"])
  loss_fn = runs_lib.eval_loss_fn(run.model, stats, batches)
  out = jax.jit(
    functools.partial(
      diagnostics.landscape_statistics,
      loss_fn,
      num_samples=options.landscape_samples,
      max_distance=float(c),
      num_bins=options.landscape_bins,
    )
  )(w0, jax.random.key(options.seed))
  out = jax.tree.map(np.asarray, jax.device_get(out))
  return {
    "label": label(run),
    "max_distance": float(c),
    "loss0": float(out["loss0"]),
    "alpha": float(out["alpha"]),
    "slope": float(out["slope"]),
    "intercept": float(out["intercept"]),
    "r2": float(out["r2"]),
    "centers": out["centers"].tolist(),
    "std": _floats(out["std"]),
    "count": out["count"].astype(int).tolist(),
    "distances": _floats(out["distances"]),
    "loss_changes": _floats(out["losses"] - out["loss0"]),
  }


def _noise_sizes(run: runs_lib.Run, options: Options) -> tuple[int, int]:
  small = options.noise_small_batch or run.plan.base_batch_size
  big = options.noise_big_batch or 8 * small
  if not 0 < small < big:
    raise ValueError(f"need 0 < --noise_small_batch < --noise_big_batch, got {small}, {big}")
  return small, big


def update_lr(plan: plan_lib.RunPlan) -> float:
  """The rate of the regime's first update after its warmup (step 0 without one).

  A warmup starts near or at 0 (Goyal et al. sec. 2.2; LARS/LAMB's polynomial
  schedule starts at 0), which would measure the ramp, not the regime's noise.
  """
  return float(plan_lib.lr_schedule(plan)(max(plan.warmup_steps, plan.poly_warmup_steps)))


def regime_update_fn(
  plan: plan_lib.RunPlan, model, batch_stats, white_noise=None, train_model=None
):
  """-lr_0 * (the regime's gradient estimate): one step of its update noise (Hoffer eq. 6).

  lr_0 is the regime's effective rate once any warmup is over
  (:func:`update_lr`, scaled by (B/B_S)**p); with
  multiplicative noise the per-example losses carry weights z ~ N(1, s**2);
  with the white noise of Jaiswal & Taura (``white_noise`` = (alpha, gamma),
  required when the plan has it) the gradient gets the noise of the
  optimizer's first update, drawn by the same transform
  (``bigbatch_jax.transforms.add_decaying_noise``: variance alpha).
  Momentum and weight decay are left out: they act alike on every regime.

  Batch norm: with ``train_model`` None, evaluation mode on ``batch_stats``
  (per-example gradients independent); otherwise ``train_model`` (the row's
  own normalization, the same parameter tree) in training mode, normalizing
  with the statistics of the update's own batch or ghost batches.
  """
  if plan.variant.optimizer != "sgd":
    raise ValueError(
      f"variant {plan.variant.name!r} updates with {plan.variant.optimizer}, whose per-layer "
      "trust ratio rescales the gradient: its update is not -lr * gradient (Hoffer eq. 6 "
      "models SGD's); measure an SGD row"
    )
  lr = update_lr(plan)
  variance = plan.noise_variance
  if plan.variant.white_noise and white_noise is None:
    raise ValueError(
      f"variant {plan.variant.name!r} adds white noise: pass white_noise=(alpha, gamma)"
    )

  def logits_fn(params, x, key):
    if train_model is None:
      return eval_logits(model, params, batch_stats, x)
    dropout_key, ghost_noise_key = jax.random.split(key)
    logits, _ = train_model.apply(
      {"params": params, "batch_stats": batch_stats},
      x,
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": dropout_key, GHOST_NOISE_RNG: ghost_noise_key},
    )
    return logits

  def update_fn(params, batch, key):
    weight_key, white_key, model_key = jax.random.split(key, 3)

    def loss(p):
      logits = logits_fn(p, batch["x"], model_key)
      weights = None
      if variance:
        weights = multiplicative_noise_weights(weight_key, logits.shape[0], variance)
      return cross_entropy(logits, batch["y"], weights)

    grads = jax.grad(loss)(params)
    if plan.variant.white_noise:
      noise = add_decaying_noise(white_key, *white_noise)
      grads, _ = noise.update(grads, noise.init(params))
    return jax.tree.map(lambda g: -lr * g, grads)

  return update_fn


def _noise_scale_at(run: runs_lib.Run, load, options: Options, small: int, big: int) -> list:
  """B_simple at each kept checkpoint of ``run``."""
  num_big = max(4, options.noise_batches // 4)
  per_step = []
  for step in runs_lib.checkpoint_steps(run.workdir):
    at = load(run.workdir, step)
    small_batches = runs_lib.sample_batches(
      at.dataset, options.noise_batches, small, options.seed, replace=True
    )
    big_batches = runs_lib.sample_batches(at.dataset, num_big, big, options.seed + 1, replace=True)
    grad_fn = runs_lib.eval_grad_fn(at.model, at.batch_stats)
    out = jax.jit(functools.partial(diagnostics.measure_noise_scale, grad_fn))(
      at.params, small_batches, big_batches
    )
    record = {"step": step, "epoch": at.plan.epoch_at(step)}
    record.update({k: float(v) for k, v in out.items()})
    per_step.append(record)
    logging.info("noise scale %s step %d: %s", run.workdir, step, record)
  return per_step


def noise_scale(run: runs_lib.Run, regimes: list[runs_lib.Run], load, options: Options) -> dict:
  """B_simple at each kept checkpoint, and each regime's update covariance."""
  small, big = _noise_sizes(run, options)
  covariances = []
  for regime in regimes:
    batches = runs_lib.sample_batches(
      run.dataset, options.noise_batches, regime.plan.batch_size, options.seed + 2, replace=True
    )
    white_noise = population_grid.white_noise(regime.plan, {})
    update_fn = regime_update_fn(regime.plan, run.model, run.batch_stats, white_noise)
    out = jax.jit(functools.partial(diagnostics.update_covariance, update_fn, num_projections=0))(
      run.params, batches, jax.random.key(options.seed)
    )
    covariances.append(
      {
        "workdir": regime.workdir,
        "variant": regime.plan.variant.name,
        "batch_size": regime.plan.batch_size,
        "lr": update_lr(regime.plan),
        "noise_variance": regime.plan.noise_variance,
        **{k: float(v) for k, v in out.items()},
      }
    )
  return {
    "label": label(run),
    "b_small": small,
    "b_big": big,
    "per_step": _noise_scale_at(run, load, options, small, big),
    "update_covariance": {"at_step": run.step, "regimes": covariances},
  }


def check_options(options: Options) -> None:
  """Bad sizes get an error naming the flag and the valid range."""
  positive = (
    "num_batches", "batch_size", "top_k", "lanczos_iterations", "sharpness_steps",
    "eval_examples", "landscape_samples", "noise_batches",
  )  # fmt: skip
  for name in positive:
    value = getattr(options, name)
    if value < 1:
      raise ValueError(f"--{name}={value} must be >= 1")
  if options.top_k > options.lanczos_iterations:
    raise ValueError(
      f"--top_k={options.top_k} must be <= --lanczos_iterations={options.lanczos_iterations}"
    )
  if options.num_alphas < 2 or not options.alpha_min < options.alpha_max:
    raise ValueError(
      f"need --num_alphas >= 2 and --alpha_min < --alpha_max, got {options.num_alphas}, "
      f"{options.alpha_min}, {options.alpha_max}"
    )
  if options.landscape_bins < 3:
    raise ValueError(f"--landscape_bins={options.landscape_bins} must be >= 3")
  if not options.epsilon > 0:
    raise ValueError(f"--epsilon={options.epsilon} must be > 0")
