"""Everything a run derives from its config, computed and checked before any compute.

The learning rate, the schedule, the epochs, the ghost size and the noise are
derived here from the base regime, the batch sizes and the variant, never in
``get_config``: a ``--config.batch_size=...`` override therefore keeps them
consistent (the STYLE guide's rule).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import itertools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from bigbatch_jax import transforms
from bigbatch_jax.noise import matched_noise_variance
from bigbatch_jax.regimes import Regime, adapt_regime, epochs_to_steps
from bigbatch_jax.training.variants import Variant, parse_variant

GHOST_STATS_UPDATES = ("sequential", "mean")
NONFINITE_POLICIES = ("stop", "skip")
COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """A run's derived quantities (all sizes are global, over every device)."""

  variant: Variant
  batch_size: int
  base_batch_size: int
  num_devices: int
  process_count: int
  ghost_batch_size: int | None
  lr_rule: str
  regime: Regime  # adapted in epochs; its lr is the base lr (scaled by the transform)
  num_train: int
  num_steps: int
  noise_variance: float  # multiplicative noise sigma**2, 0 when off
  clip_norm: float | None
  clip_steps: int | None
  # (first step, global batch size) of each phase; one phase unless "grow".
  batch_phases: tuple[tuple[int, int], ...] = ()
  drop_distances: tuple[float, ...] = ()  # "dist": ||w - w0|| targets of the lr drops

  @property
  def local_batch_size(self) -> int:
    return self.batch_size // self.num_devices

  @property
  def steps_per_epoch(self) -> float:
    return self.num_train / self.batch_size

  @property
  def batch_sizes(self) -> tuple[int, ...]:
    """The distinct global batch sizes of the run (each compiles once)."""
    return tuple(sorted({size for _, size in self.batch_phases}))

  def batch_size_at(self, step: int) -> int:
    """The global batch size of update ``step`` (host side)."""
    starts = [start for start, _ in self.batch_phases]
    return self.batch_phases[bisect.bisect_right(starts, step) - 1][1]

  def batch_size_schedule(self):
    """The batch size of update ``step`` as a jittable function."""
    starts = jnp.asarray([start for start, _ in self.batch_phases], jnp.int32)
    sizes = jnp.asarray([size for _, size in self.batch_phases], jnp.float32)
    return lambda step: sizes[jnp.searchsorted(starts, step, side="right") - 1]

  def offset_at(self, step: int) -> int:
    """Training examples read before update ``step``."""
    offset = 0
    ends = [start for start, _ in self.batch_phases[1:]] + [step]
    for (start, size), end in zip(self.batch_phases, ends, strict=True):
      offset += (min(end, step) - start) * size
      if end >= step:
        break
    return offset

  @property
  def lr_scale(self) -> float:
    """(B / B_base)**p, the factor on the base learning rate."""
    ratio = self.batch_size / self.base_batch_size
    return ratio ** transforms.lr_scaling_exponent(self.lr_rule)

  def epoch_at(self, step: int) -> float:
    return self.offset_at(step) / self.num_train


def _positive_int(config, key: str) -> int:
  value = config[key]
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"config.{key} must be a positive integer, got {value!r}")
  return value


def make_plan(
  config: ml_collections.ConfigDict, num_train: int, num_devices: int, process_count: int = 1
) -> RunPlan:
  """Derives and validates the run's sizes, regime and remedies from its config.

  Args:
    config: the run config (see experiments/configs/default.py).
    num_train: the number of training examples.
    num_devices: devices over which the batch is split (all processes).
    process_count: JAX processes; each loads its share of every batch.

  Returns:
    A :class:`RunPlan`.
  """
  variant = parse_variant(config.variant)
  base = _positive_int(config, "base_batch_size")
  large = _positive_int(config, "large_batch_size")
  if config.batch_size is None:
    batch = large if variant.large_batch else base
  else:
    batch = _positive_int(config, "batch_size")
  if variant.large_batch and batch <= base:
    raise ValueError(
      f"variant {variant.name!r} is a large-batch variant but batch_size={batch} is not "
      f"larger than base_batch_size={base}"
    )
  if num_devices <= 0 or process_count <= 0:
    raise ValueError(f"need >= 1 device and process, got {num_devices} and {process_count}")
  if batch % num_devices:
    raise ValueError(
      f"batch_size={batch} is not divisible by the {num_devices} devices "
      f"({process_count} process(es)); use a multiple of {num_devices}"
    )
  if batch % process_count:
    raise ValueError(f"batch_size={batch} is not divisible by process_count={process_count}")
  local = batch // num_devices

  ghost = None
  if variant.ghost_batch_norm:
    ghost = base if config.ghost_batch_size is None else _positive_int(config, "ghost_batch_size")
    if ghost < 2:
      raise ValueError(f"config.ghost_batch_size={ghost} must be >= 2")
    if local % ghost:
      raise ValueError(
        f"ghost_batch_size={ghost} does not divide the per-device batch of {local} "
        f"(batch_size={batch} over {num_devices} devices); choose a ghost size that divides "
        f"{local}"
      )
  if not isinstance(config.steps_per_call, int) or config.steps_per_call < 1:
    raise ValueError(
      f"config.steps_per_call must be an integer >= 1, got {config.steps_per_call!r}"
    )
  if config.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"config.compute_dtype={config.compute_dtype!r}; valid: {COMPUTE_DTYPES}")
  if config.nonfinite_policy not in NONFINITE_POLICIES:
    raise ValueError(
      f"config.nonfinite_policy={config.nonfinite_policy!r}; valid: {NONFINITE_POLICIES}"
    )
  if config.ghost_stats_update not in GHOST_STATS_UPDATES:
    raise ValueError(
      f"config.ghost_stats_update={config.ghost_stats_update!r}; valid: {GHOST_STATS_UPDATES}"
    )

  lr_rule = variant.lr_rule if config.lr_rule is None else config.lr_rule
  if isinstance(lr_rule, str) and lr_rule not in transforms.LR_RULE_EXPONENTS:
    # An exponent given on the command line, e.g. --config.lr_rule=0.75.
    with contextlib.suppress(ValueError):
      lr_rule = float(lr_rule)
  transforms.lr_scaling_exponent(lr_rule)  # validates
  regime_config = config.regime
  base_regime = Regime(
    lr=regime_config.lr,
    momentum=regime_config.momentum,
    weight_decay=regime_config.weight_decay,
    epochs=regime_config.epochs,
    drop_epochs=tuple(regime_config.drop_epochs),
    drop_factor=regime_config.drop_factor,
    nesterov=regime_config.nesterov,
    batch_size=base,
  )
  # The learning rate is scaled by the scale_by_batch_size transform, so the
  # adapted regime keeps the base rate ("none") and only stretches epochs.
  regime = adapt_regime(
    base_regime, batch, lr_rule="none", regime_adaptation=variant.regime_adaptation
  )
  if config.num_epochs is not None:
    if not config.num_epochs > 0:
      raise ValueError(f"config.num_epochs must be > 0 or None, got {config.num_epochs!r}")
    regime = dataclasses.replace(regime, epochs=float(config.num_epochs))
  if num_train <= 0:
    raise ValueError(f"the training set is empty (num_train={num_train})")
  batch_phases = ((0, batch),)
  if variant.grow_batch:
    batch_phases = _growing_batch_phases(config, regime, batch, num_train, num_devices, ghost)
    last_phase_epochs = regime.epochs - _phase_epochs(config, regime)[-1]
    regime = dataclasses.replace(regime, drop_epochs=())  # the batch grows instead
  drop_distances = ()
  if variant.distance_drops:
    drop_distances = _drop_distances(config)
    regime = dataclasses.replace(regime, drop_epochs=())  # the distance decides instead
  num_steps = regime.num_steps(num_train)
  if variant.grow_batch:
    num_steps = batch_phases[-1][0] + epochs_to_steps(
      last_phase_epochs, num_train, batch_phases[-1][1]
    )
  if num_steps < 1:
    raise ValueError(
      f"{regime.epochs} epochs of {num_train} examples at batch {batch} is less than one update"
    )

  noise_variance = 0.0
  if variant.multiplicative_noise:
    if config.mult_noise_variance is None:
      noise_variance = matched_noise_variance(batch, base)
    else:
      noise_variance = float(config.mult_noise_variance)
      if noise_variance < 0:
        raise ValueError(f"config.mult_noise_variance must be >= 0, got {noise_variance}")

  clip_norm = clip_steps = None
  if variant.clip or config.grad_clip_norm is not None:
    clip_norm = 5.0 if config.grad_clip_norm is None else float(config.grad_clip_norm)
    if not clip_norm > 0:
      raise ValueError(f"config.grad_clip_norm must be > 0, got {config.grad_clip_norm!r}")
    clip_steps = config.grad_clip_steps
    if clip_steps is not None and (not isinstance(clip_steps, int) or clip_steps < 0):
      raise ValueError(
        f"config.grad_clip_steps must be an integer >= 0 or None, got {clip_steps!r}"
      )

  return RunPlan(
    variant=variant,
    batch_size=batch,
    base_batch_size=base,
    num_devices=num_devices,
    process_count=process_count,
    ghost_batch_size=ghost,
    lr_rule=lr_rule,
    regime=regime,
    num_train=num_train,
    num_steps=num_steps,
    noise_variance=noise_variance,
    clip_norm=clip_norm,
    clip_steps=clip_steps,
    batch_phases=batch_phases,
    drop_distances=drop_distances,
  )


def _phase_epochs(config, regime: Regime) -> list[float]:
  """Epochs at which the batch of a "grow" run changes: 0 and the drop epochs."""
  return [0.0, *(e for e in regime.drop_epochs if e < regime.epochs)]


def _growing_batch_phases(config, regime, batch, num_train, num_devices, ghost):
  """(first step, batch) phases: the batch times the growth factor at each drop epoch."""
  factor = config.batch_growth_factor
  if factor is None:
    factor = 1.0 / regime.drop_factor
  if not factor > 1:
    raise ValueError(f"config.batch_growth_factor must be > 1, got {factor!r}")
  epochs = _phase_epochs(config, regime)
  if len(epochs) < 2:
    raise ValueError("variant part 'grow' needs regime.drop_epochs: the batch grows at them")
  phases, step, size = [], 0, batch
  for k, start_epoch in enumerate(epochs):
    if size % num_devices or (ghost and (size // num_devices) % ghost):
      raise ValueError(
        f"the growing batch reaches {size}, which does not split into {num_devices} device(s)"
        + (f" of whole ghost batches of {ghost}" if ghost else "")
        + "; choose a batch_growth_factor that keeps every size divisible"
      )
    phases.append((step, size))
    if k + 1 < len(epochs):
      step += epochs_to_steps(epochs[k + 1] - start_epoch, num_train, size)
      size = int(round(size * factor))
  return tuple(phases)


def distances_at_drops(workdir: str) -> tuple[float, ...]:
  """||w - w0|| of a finished run at each of its learning-rate drops.

  Reads ``metrics.jsonl`` and takes the weight distance logged last before
  each drop of the logged learning rate (finer logging gives closer values).
  """
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.drop_distances_from: no metrics.jsonl in {workdir}")
  with open(path) as f:
    records = [r for r in map(json.loads, f) if "lr" in r and "weight_distance" in r]
  distances = []
  for before, after in itertools.pairwise(records):
    if after["lr"] < before["lr"] * (1 - 1e-6):
      distances.append(float(before["weight_distance"]))
  if not distances:
    raise ValueError(f"the run in {workdir} logged no learning-rate drop to take distances from")
  return tuple(distances)


def _drop_distances(config) -> tuple[float, ...]:
  if config.drop_distances is not None and config.drop_distances_from is not None:
    raise ValueError("set one of config.drop_distances and config.drop_distances_from, not both")
  if config.drop_distances is not None:
    distances = tuple(float(d) for d in config.drop_distances)
  elif config.drop_distances_from is not None:
    distances = distances_at_drops(config.drop_distances_from)
  else:
    raise ValueError(
      "variant part 'dist' needs the ||w - w0|| targets: --config.drop_distances='(4.0, 6.0)' "
      "or --config.drop_distances_from=WORKDIR of a reference run"
    )
  if not distances or any(d <= 0 for d in distances) or list(distances) != sorted(set(distances)):
    raise ValueError(f"drop distances must be positive and increasing, got {distances}")
  return distances


def lr_schedule(plan: RunPlan) -> optax.Schedule:
  """The scheduled learning rate: the regime's schedule times (B / B_base)**p.

  With "dist" the distance-triggered drops multiply this on device (the step
  logs the product).
  """
  base = plan.regime.schedule(plan.steps_per_epoch)
  scale = transforms.batch_size_scale_schedule(
    plan.batch_size_schedule(), plan.base_batch_size, plan.lr_rule
  )
  return lambda step: base(step) * scale(step)


def make_optimizer(
  plan: RunPlan, noise_key: jax.Array, white_noise: tuple[float, float] = (1e-5, 0.55)
) -> optax.GradientTransformation:
  """The optimizer chain of the plan.

  clip -> white noise -> weight decay -> momentum SGD on the base schedule ->
  scale by (B / B_base)**p. Clipping and noise act on the raw gradient, weight
  decay is added to the gradient before momentum (as torch.optim.SGD in the
  bigBatch code), and the batch-size scaling multiplies the whole step, which
  equals scaling the learning rate.

  Args:
    plan: the run plan.
    noise_key: a typed key for the white noise (replicated on all devices).
    white_noise: (alpha, gamma) of the decaying white noise.

  Returns:
    An ``optax.GradientTransformation``.
  """
  parts: list[Any] = []
  if plan.clip_norm is not None:
    if plan.clip_steps is None:
      parts.append(optax.clip_by_global_norm(plan.clip_norm))
    else:
      parts.append(transforms.clip_by_global_norm_during(plan.clip_norm, plan.clip_steps))
  if plan.variant.white_noise:
    alpha, gamma = white_noise
    parts.append(transforms.add_decaying_noise(noise_key, alpha, gamma))
  regime = plan.regime
  if regime.weight_decay:
    parts.append(optax.add_decayed_weights(regime.weight_decay))
  parts.append(
    optax.sgd(
      regime.schedule(plan.steps_per_epoch),
      momentum=regime.momentum or None,
      nesterov=regime.nesterov,
    )
  )
  batch_size = plan.batch_size_schedule() if len(plan.batch_phases) > 1 else plan.batch_size
  parts.append(transforms.scale_by_batch_size(batch_size, plan.base_batch_size, plan.lr_rule))
  if plan.drop_distances:
    parts.append(transforms.scale_by_distance_drops(plan.drop_distances, regime.drop_factor))
  return optax.chain(*parts)


def norm_layer(plan: RunPlan, config: ml_collections.ConfigDict, axis_name: str | None):
  """The GhostBatchNorm constructor the model is built with.

  Every variant uses GhostBatchNorm so that all variants share one parameter
  tree (interpolating SB and LB parameters needs that); without ``gbn`` its
  ghost size is None, which is flax BatchNorm over the whole (global) batch.
  """
  from bigbatch_jax.ghost_batch_norm import GhostBatchNorm

  return functools.partial(
    GhostBatchNorm,
    ghost_batch_size=plan.ghost_batch_size,
    stats_update=config.ghost_stats_update,
    ghost_variance=config.ghost_variance,
    momentum=config.bn_momentum,
    epsilon=config.bn_epsilon,
    axis_name=axis_name,
  )
