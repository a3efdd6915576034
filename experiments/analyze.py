"""Diagnostics of finished runs: sharpness, interpolation, landscape, noise scale.

  python -m experiments.analyze --workdir=/tmp/sb --other_workdir=/tmp/lb \
    --what=sharpness,interpolation,landscape,noise_scale

Reads the runs' config.json, metrics.jsonl and checkpoints and writes
``analysis.json`` (the numbers; new results replace those of the same
diagnostic) and ``analysis_<what>.png`` into --workdir:

* sharpness: top Hessian eigenvalues (Lanczos) and Keskar's epsilon-sharpness
  of each run (--workdir, --other_workdir, --extra_workdirs).
* interpolation: loss and accuracy along (1 - a) theta_S + a theta_L,
  theta_S from --workdir and theta_L from --other_workdir (required), batch
  statistics recomputed on training data at each a.
* landscape: Hoffer appendix B at the run's initialization w0, with c the
  largest weight distance the run reached (or --landscape_max_distance).
* noise_scale: B_simple at every kept checkpoint of --workdir, and the
  update covariance of each run's regime at --workdir's last parameters.

Losses and gradients use batch norm in evaluation mode (see
bigbatch_jax.diagnostics.runs).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

from bigbatch_jax import diagnostics
from bigbatch_jax.diagnostics import runs as runs_lib
from bigbatch_jax.noise import multiplicative_noise_weights
from bigbatch_jax.training import plan as plan_lib
from experiments.configs import default

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


def _label(run: runs_lib.Run) -> str:
  return f"{run.plan.variant.name} (B={run.plan.batch_size})"


def _same_data(a, b) -> bool:
  keys = ("dataset", "mnist1d_num_samples", "data_seed")
  return all(a.get(k) == b.get(k) for k in keys)


class _Loader:
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


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _save(fig, workdir: str, name: str) -> str:
  path = os.path.join(workdir, f"analysis_{name}.png")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  _plt().close(fig)
  return path


def sharpness(runs: list[runs_lib.Run], options: Options, workdir: str) -> dict:
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
        "variant": run.plan.variant.name,
        "batch_size": run.plan.batch_size,
        "step": run.step,
        "train_loss": float(loss_fn(run.params)),
        "top_eigenvalues": [float(v) for v in top],
        "epsilon_sharpness": float(phi),
      }
    )
    logging.info("sharpness %s: %s", run.workdir, results[-1])
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
  labels = [_label(r) for r in runs]
  positions = np.arange(len(runs))
  axes[0].bar(positions, [r["top_eigenvalues"][0] for r in results], color="tab:blue")
  axes[0].set_ylabel("top Hessian eigenvalue")
  axes[1].bar(positions, [r["epsilon_sharpness"] for r in results], color="tab:orange")
  axes[1].set_ylabel(f"epsilon-sharpness (%), eps={options.epsilon:g}")
  for ax in axes:
    ax.set_xticks(positions, labels, rotation=30, ha="right", fontsize=7)
    ax.grid(alpha=0.3, axis="y")
  fig.suptitle("Sharpness of the final minimum (Keskar et al. 2017)", fontsize=9)
  return {"runs": results, "figure": _save(fig, workdir, "sharpness")}


def interpolation(run_s: runs_lib.Run, run_l: runs_lib.Run, options: Options, workdir: str):
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
  curve = diagnostics.interpolation_curve(evaluate, run_s.params, run_l.params, alphas)
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 4))
  ax2 = ax.twinx()
  for split, style in (("train", "--"), ("test", "-")):
    ax.semilogy(curve["alpha"], curve[f"{split}_loss"], "b" + style, label=f"{split} loss")
    ax2.plot(
      curve["alpha"],
      100 * np.asarray(curve[f"{split}_accuracy"]),
      "r" + style,
      label=f"{split} accuracy",
    )
  ax.set_xlabel(f"a   (0: {_label(run_s)},  1: {_label(run_l)})", fontsize=8)
  ax.set_ylabel("cross-entropy", color="b")
  ax2.set_ylabel("accuracy (%)", color="r")
  for a in (0.0, 1.0):
    ax.axvline(a, color="gray", lw=0.5)
  handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
  ax.legend(
    handles,
    [h.get_label() for h in handles],
    fontsize=7,
    ncol=4,
    loc="upper center",
    bbox_to_anchor=(0.5, -0.2),
  )
  ax.set_title("(1 - a) theta_S + a theta_L (Keskar Fig. 3, Jaiswal Fig. 2)", fontsize=9)
  return {
    "small_batch_workdir": run_s.workdir,
    "large_batch_workdir": run_l.workdir,
    "curve": curve,
    "figure": _save(fig, workdir, "interpolation"),
  }


def _max_weight_distance(workdir: str) -> float:
  _, distances = diagnostics.weight_distance_series(workdir)
  if not distances:
    raise ValueError(
      f"{workdir}/metrics.jsonl has no weight_distance; pass --landscape_max_distance"
    )
  return max(distances)


def landscape(run: runs_lib.Run, options: Options, workdir: str) -> dict:
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
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
  diff = out["losses"] - out["loss0"]
  axes[0].scatter(out["distances"], diff, s=2, alpha=0.4)
  axes[0].set_xlabel("||w - w0||")
  axes[0].set_ylabel("L(w) - L(w0)")
  valid = np.isfinite(out["std"])
  axes[1].plot(out["centers"][valid], out["std"][valid], "o", ms=3, label="binned std")
  d = out["centers"][valid][1:]
  axes[1].plot(
    d,
    np.exp(out["intercept"]) * d ** out["slope"],
    "--",
    label=f"fit: alpha = {float(out['alpha']):.2f} (R²={float(out['r2']):.3f})",
  )
  axes[1].set_xscale("log")
  axes[1].set_yscale("log")
  axes[1].set_xlabel("||w - w0||")
  axes[1].set_ylabel("sqrt(E (L(w) - L(w0))²)")
  axes[1].legend(fontsize=7)
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.suptitle(f"Random directions at w0 of {_label(run)} (Hoffer appendix B)", fontsize=9)
  return {
    "max_distance": float(c),
    "loss0": float(out["loss0"]),
    "alpha": float(out["alpha"]),
    "slope": float(out["slope"]),
    "intercept": float(out["intercept"]),
    "r2": float(out["r2"]),
    "centers": out["centers"].tolist(),
    "std": [None if not math.isfinite(s) else float(s) for s in out["std"]],
    "count": out["count"].astype(int).tolist(),
    "figure": _save(fig, workdir, "landscape"),
  }


def _noise_sizes(run: runs_lib.Run, options: Options) -> tuple[int, int]:
  small = options.noise_small_batch or run.plan.base_batch_size
  big = options.noise_big_batch or 8 * small
  if not 0 < small < big:
    raise ValueError(f"need 0 < --noise_small_batch < --noise_big_batch, got {small}, {big}")
  return small, big


def _regime_update_fn(regime: runs_lib.Run, model, batch_stats):
  """-lr_0 * (the regime's gradient estimate): one step of its update noise (Hoffer eq. 6).

  lr_0 is the regime's effective initial rate (scaled by (B/B_S)**p); with
  multiplicative noise the per-example losses carry weights z ~ N(1, s**2).
  Momentum and weight decay are left out: they act alike on every regime.
  """
  lr = float(plan_lib.lr_schedule(regime.plan)(0))
  variance = regime.plan.noise_variance

  def update_fn(params, batch, key):
    def loss(p):
      logits = model.apply({"params": p, "batch_stats": batch_stats}, batch["x"], train=False)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
      if variance:
        losses = losses * multiplicative_noise_weights(key, losses.shape[0], variance)
      return jnp.mean(losses)

    return jax.tree.map(lambda g: -lr * g, jax.grad(loss)(params))

  return update_fn


def noise_scale(
  run: runs_lib.Run, regimes: list[runs_lib.Run], load, options: Options, workdir: str
) -> dict:
  """B_simple at each kept checkpoint, and each regime's update covariance."""
  small, big = _noise_sizes(run, options)
  num_big = max(4, options.noise_batches // 4)
  per_step = []
  for step in runs_lib.checkpoint_steps(run.workdir):
    at = load(run.workdir, step)
    key_small, key_big = options.seed, options.seed + 1
    small_batches = runs_lib.sample_batches(
      at.dataset, options.noise_batches, small, key_small, replace=True
    )
    big_batches = runs_lib.sample_batches(at.dataset, num_big, big, key_big, replace=True)
    grad_fn = runs_lib.eval_grad_fn(at.model, at.batch_stats)
    out = jax.jit(functools.partial(diagnostics.measure_noise_scale, grad_fn))(
      at.params, small_batches, big_batches
    )
    record = {"step": step, "epoch": at.plan.epoch_at(step)}
    record.update({k: float(v) for k, v in out.items()})
    per_step.append(record)
    logging.info("noise scale %s step %d: %s", run.workdir, step, record)

  covariances = []
  for regime in regimes:
    batches = runs_lib.sample_batches(
      run.dataset, options.noise_batches, regime.plan.batch_size, options.seed + 2, replace=True
    )
    update_fn = _regime_update_fn(regime, run.model, run.batch_stats)
    out = jax.jit(functools.partial(diagnostics.update_covariance, update_fn, num_projections=0))(
      run.params, batches, jax.random.key(options.seed)
    )
    covariances.append(
      {
        "workdir": regime.workdir,
        "variant": regime.plan.variant.name,
        "batch_size": regime.plan.batch_size,
        "lr": float(plan_lib.lr_schedule(regime.plan)(0)),
        "noise_variance": regime.plan.noise_variance,
        **{k: float(v) for k, v in out.items()},
      }
    )

  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
  steps = [r["step"] for r in per_step]
  axes[0].plot(steps, [r["b_simple"] for r in per_step], "o-", ms=3)
  axes[0].set_ylabel("B_simple = tr(Sigma) / |G|²")
  axes[0].set_yscale("log")
  axes[1].plot(steps, [r["trace_sigma"] for r in per_step], "o-", ms=3, label="tr(Sigma)")
  axes[1].plot(steps, [r["grad_sq"] for r in per_step], "s-", ms=3, label="|G|²")
  axes[1].set_yscale("symlog", linthresh=1e-3)
  axes[1].legend(fontsize=7)
  for ax in axes:
    ax.set_xlabel("updates")
    ax.grid(alpha=0.3)
  fig.suptitle(
    f"Gradient noise scale of {_label(run)}, batches {small} and {big} (McCandlish et al.)",
    fontsize=9,
  )
  return {
    "b_small": small,
    "b_big": big,
    "per_step": per_step,
    "update_covariance": {"at_step": run.step, "regimes": covariances},
    "figure": _save(fig, workdir, "noise_scale"),
  }


def _check_options(options: Options) -> None:
  positive = (
    "num_batches",
    "batch_size",
    "top_k",
    "lanczos_iterations",
    "sharpness_steps",
    "eval_examples",
    "landscape_samples",
    "noise_batches",
  )
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


def analyze(
  workdir: str,
  what: str | Sequence[str],
  other_workdir: str | None = None,
  extra_workdirs: Sequence[str] = (),
  options: Options = Options(),
) -> dict:
  """Runs the requested diagnostics and writes analysis.json and the PNGs into ``workdir``.

  Args:
    workdir: a finished training workdir (theta_S for interpolation).
    what: comma-separated names, a subset of ``DIAGNOSTICS``.
    other_workdir: a second run (theta_L; required for interpolation).
    extra_workdirs: more runs to compare in the sharpness figure.
    options: the diagnostics' sizes.

  Returns:
    The analysis dict written to ``workdir/analysis.json`` (all diagnostics
    run so far, the requested ones replaced).
  """
  names = parse_what(what)
  _check_options(options)
  if "interpolation" in names and not other_workdir:
    raise ValueError("--what=interpolation needs --other_workdir (theta_L, the large-batch run)")
  load = _Loader()
  run = load(workdir)
  other = load(other_workdir) if other_workdir else None
  path = os.path.join(workdir, "analysis.json")
  analysis = {}
  if os.path.exists(path):
    with open(path) as f:
      analysis = json.load(f)
  for name in names:
    if name == "sharpness":
      compared = [run] + ([other] if other else []) + [load(w) for w in extra_workdirs]
      analysis[name] = sharpness(compared, options, workdir)
    elif name == "interpolation":
      analysis[name] = interpolation(run, other, options, workdir)
    elif name == "landscape":
      analysis[name] = landscape(run, options, workdir)
    else:
      regimes = [run] + ([other] if other else [])
      analysis[name] = noise_scale(run, regimes, load, options, workdir)
    with open(path, "w") as f:
      json.dump(analysis, f, indent=2)
  analysis["options"] = dataclasses.asdict(options)
  with open(path, "w") as f:
    json.dump(analysis, f, indent=2)
  return analysis


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags; defined only when run as a script, so that this module
  and the other experiment scripts can be imported together (absl flags are global)."""
  flags.DEFINE_string("workdir", None, "A finished training workdir; outputs are written here.")
  flags.DEFINE_string("what", ",".join(DIAGNOSTICS), f"Comma list of: {', '.join(DIAGNOSTICS)}.")
  flags.DEFINE_string("other_workdir", None, "Second run: theta_L of the interpolation.")
  flags.DEFINE_list("extra_workdirs", [], "More runs for the sharpness comparison.")
  _DEFAULTS = Options()
  flags.DEFINE_integer("num_batches", _DEFAULTS.num_batches, "Fixed training batches of the loss.")
  flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Examples per fixed batch.")
  flags.DEFINE_integer("top_k", _DEFAULTS.top_k, "Hessian eigenvalues to report.")
  flags.DEFINE_integer("lanczos_iterations", _DEFAULTS.lanczos_iterations, "Lanczos steps.")
  flags.DEFINE_float("epsilon", _DEFAULTS.epsilon, "Keskar epsilon-sharpness box size.")
  flags.DEFINE_integer("sharpness_steps", _DEFAULTS.sharpness_steps, "Ascent steps of sharpness.")
  flags.DEFINE_integer("num_alphas", _DEFAULTS.num_alphas, "Interpolation points.")
  flags.DEFINE_float("alpha_min", _DEFAULTS.alpha_min, "First interpolation coefficient.")
  flags.DEFINE_float("alpha_max", _DEFAULTS.alpha_max, "Last interpolation coefficient.")
  flags.DEFINE_integer("eval_examples", _DEFAULTS.eval_examples, "Examples per split (interp.).")
  flags.DEFINE_integer("landscape_samples", _DEFAULTS.landscape_samples, "Random (v, z) pairs.")
  flags.DEFINE_integer("landscape_bins", _DEFAULTS.landscape_bins, "Distance bins.")
  flags.DEFINE_float("landscape_max_distance", None, "c (default: the run's max ||w - w0||).")
  flags.DEFINE_integer("noise_small_batch", None, "Small batch (default: the base batch size).")
  flags.DEFINE_integer("noise_big_batch", None, "Big batch (default: 8 x the small batch).")
  flags.DEFINE_integer("noise_batches", _DEFAULTS.noise_batches, "Small batches per estimate.")
  flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of the batch draws and random directions.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  options = Options(**{f.name: FLAGS[f.name].value for f in dataclasses.fields(Options)})
  analysis = analyze(FLAGS.workdir, FLAGS.what, FLAGS.other_workdir, FLAGS.extra_workdirs, options)
  print(json.dumps({k: v.get("figure") for k, v in analysis.items() if isinstance(v, dict)}))


if __name__ == "__main__":
  define_flags()
  app.run(main)
