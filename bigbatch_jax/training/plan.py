"""Everything a run derives from its config, computed and checked before any compute.

The learning rate, the schedule, the epochs, the ghost size and the noise are
derived here from the base regime, the batch sizes and the variant, never in
``get_config``: a ``--config.batch_size=...`` or ``--config.regime.epochs=...``
override therefore keeps them consistent (the STYLE guide's rule). The plan is
made once per run and then only read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax.numpy as jnp
import ml_collections
import optax

from bigbatch_jax import transforms
from bigbatch_jax.data.schedule import BatchSchedule
from bigbatch_jax.ghost_noise import GHOST_DRAWS
from bigbatch_jax.noise import matched_noise_variance
from bigbatch_jax.protocol import Protocol, column_of, resolve_protocol
from bigbatch_jax.reference_columns import ScriptColumn
from bigbatch_jax.regimes import (
  Regime,
  adapt_regime,
  gradual_warmup,
  growing_batch_phases,
)
from bigbatch_jax.training.metrics import distances_at_drops
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
  ghost_batch_size: int | None
  lr_rule: str | float
  regime: Regime  # adapted in epochs; its lr is the base lr (scaled by the transform)
  num_train: int
  num_steps: int
  noise_variance: float  # multiplicative noise sigma**2, 0 when off
  clip_norm: float | None
  clip_steps: int | None
  # (first step, global batch size) of each phase; one phase unless "grow".
  batch_phases: tuple[tuple[int, int], ...] = ()
  drop_distances: tuple[float, ...] = ()  # "dist": ||w - w0|| targets of the lr drops
  # The batch the lr rule divides by: base_batch_size, or 256 with main_normal_lr.
  lr_base_batch_size: int | None = None
  grow_lr_follows_batch: bool = False  # "grow": the lr rule reads the growing batch
  warmup_steps: int = 0  # "warmup": Goyal's linear ramp to the scaled lr over these updates
  momentum_restart_steps: tuple[int, ...] = ()  # the momentum is zeroed before these updates
  lars_trust_coefficient: float = 0.001  # "lars": eta
  bn_scale_uniform: bool = False  # batch-norm scales start U(0, 1) (PyTorch < 1.0)
  # Each epoch is ceil(N / B) updates, the last of N mod B examples.
  partial_last_batch: bool = False
  running_variance: str = "biased"  # batch norm's running variance: "biased" or "unbiased"
  script_command: str = ""  # with script_columns: the bigBatch command the run reproduces

  @functools.cached_property
  def batch_schedule(self) -> BatchSchedule:
    """The batch size of each step and its stream offset (shared with the data iterator).

    Built once per plan: the loop asks it at every call.
    """
    return BatchSchedule(self.batch_phases, self.num_train if self.partial_last_batch else None)

  @property
  def steps_per_epoch(self) -> float:
    """Updates per epoch: N / B (batches cross epochs), or ceil(N / B) with partial batches."""
    return self.batch_schedule.steps_per_epoch(self.num_train)

  @property
  def partial_batch_size(self) -> int:
    """The global size of each epoch's partial last batch; 0 when there is none."""
    return self.batch_schedule.partial_size

  def ghost_batch_size_at(self, batch_size: int) -> int | None:
    """The ghost size of a step at ``batch_size``: the plan's, or the partial batch's.

    The reference (``main_gbn.py``) splits every batch with ``torch.chunk`` into
    as many ghost batches K as a full one holds, so the partial batch's ghost
    batches have partial / K examples (on MNIST, 2656 / 32 = 83).
    """
    partial = self.partial_batch_size
    if self.ghost_batch_size is None or not partial or batch_size != partial:
      return self.ghost_batch_size
    return batch_size * self.ghost_batch_size // self.batch_size

  @property
  def batch_sizes(self) -> tuple[int, ...]:
    """The distinct global batch sizes of the run (each compiles once)."""
    return self.batch_schedule.sizes

  def batch_size_at(self, step: int) -> int:
    """The global batch size of update ``step`` (host side)."""
    return self.batch_schedule(step)

  def batch_size_schedule(self):
    """The batch size of update ``step`` as a jittable function."""
    starts = jnp.asarray([start for start, _ in self.batch_phases], jnp.int32)
    sizes = jnp.asarray([size for _, size in self.batch_phases], jnp.float32)
    return lambda step: sizes[jnp.searchsorted(starts, step, side="right") - 1]

  def offset_at(self, step: int) -> int:
    """Training examples read before update ``step``."""
    return self.batch_schedule.offset_at(step)

  @property
  def lr_base(self) -> int:
    """The batch size the learning-rate rule divides by."""
    return self.lr_base_batch_size or self.base_batch_size

  def lr_batch_size(self):
    """The batch size the learning-rate rule reads: the schedule if the lr follows "grow"."""
    if len(self.batch_phases) > 1 and self.grow_lr_follows_batch:
      return self.batch_size_schedule()
    return self.batch_size

  @property
  def lr_scale(self) -> float:
    """(B / B_base)**p, the factor on the base learning rate (after any warmup)."""
    ratio = self.batch_size / self.lr_base
    return ratio ** transforms.lr_scaling_exponent(self.lr_rule)

  def epoch_at(self, step: int) -> float:
    return self.offset_at(step) / self.num_train


def make_plan(
  config: ml_collections.ConfigDict, num_train: int, num_devices: int, process_count: int = 1
) -> RunPlan:
  """Derives and validates the run's sizes, regime and remedies from its config.

  Args:
    config: the run config (see bigbatch_jax/configs/default.py).
    num_train: the number of training examples.
    num_devices: devices over which the batch is split (all processes).
    process_count: JAX processes; each loads its share of every batch.

  Returns:
    A :class:`RunPlan`.
  """
  _check_choices(config)
  if num_train <= 0:
    raise ValueError(f"the training set is empty (num_train={num_train})")
  variant = parse_variant(config.variant)
  protocol = resolve_protocol(config)
  column = column_of(protocol, config, variant)
  base, batch = _batch_sizes(config, variant, num_devices, process_count, column)
  ghost = _ghost_batch_size(config, variant, base, batch, num_devices, column)
  regime = _adapted_regime(config, variant, base, batch, protocol, column)
  # By the reference protocol's default a growing batch (no script grows one) keeps whole epochs.
  partial = protocol.partial_last_batch and (
    protocol.partial_last_batch_explicit or not variant.grow_batch
  )
  batch_phases, num_steps, regime = _durations(
    config, variant, regime, num_train, num_devices, ghost, partial
  )
  if partial:
    _check_partial_batch(num_train, batch, num_devices, process_count, ghost)
  drop_distances = ()
  if variant.distance_drops:
    drop_distances = _drop_distances(config)
    regime = dataclasses.replace(regime, drop_epochs=())  # the distance decides instead
  clip_norm, clip_steps = _clipping(config, variant)
  schedule = BatchSchedule(batch_phases, num_train if partial else None)
  return RunPlan(
    variant=variant,
    batch_size=batch,
    base_batch_size=base,
    num_devices=num_devices,
    ghost_batch_size=ghost,
    lr_rule=_lr_rule(config, variant, column),
    regime=regime,
    num_train=num_train,
    num_steps=num_steps,
    noise_variance=_noise_variance(config, variant, batch, base),
    clip_norm=clip_norm,
    clip_steps=clip_steps,
    batch_phases=batch_phases,
    drop_distances=drop_distances,
    lr_base_batch_size=column.lr_base if column else protocol.lr_base_batch_size(base),
    grow_lr_follows_batch=_flag(config, "grow_lr_follows_batch"),
    warmup_steps=_warmup_steps(config, variant, num_train, schedule),
    momentum_restart_steps=_momentum_restart_steps(
      protocol, variant, regime, num_train, schedule, num_steps
    ),
    lars_trust_coefficient=_lars_trust_coefficient(config),
    bn_scale_uniform=protocol.bn_scale_uniform,
    partial_last_batch=partial,
    running_variance="unbiased" if protocol.unbiased_running_variance else "biased",
    script_command=column.command if column else "",
  )


def _flag(config, key: str) -> bool:
  value = config[key]
  if not isinstance(value, bool):
    raise ValueError(f"config.{key} must be True or False, got {value!r}")
  return value


def _warmup_steps(config, variant: Variant, num_train: int, schedule: BatchSchedule) -> int:
  """Updates of Goyal et al.'s gradual warmup ("warmup"; 0 without it)."""
  if not variant.warmup:
    return 0
  epochs = config.warmup_epochs
  if isinstance(epochs, bool) or not isinstance(epochs, int | float) or not epochs > 0:
    raise ValueError(f"config.warmup_epochs must be > 0, got {epochs!r}")
  return max(1, schedule.num_steps(epochs, num_train))


def _momentum_restart_steps(protocol: Protocol, variant, regime, num_train, schedule, num_steps):
  """The first update of every epoch when the momentum restarts."""
  if not protocol.momentum_restart:
    return ()
  if variant.optimizer == "lamb" or not regime.momentum:
    if not protocol.momentum_restart_explicit:
      return ()  # the reference protocol's default: nothing to restart
    raise ValueError(
      "config.momentum_restart zeroes the SGD (or LARS) momentum every epoch, but this run has "
      f"none (optimizer {variant.optimizer!r}, momentum {regime.momentum}); set "
      "config.momentum_restart=False"
    )
  return schedule.epoch_first_steps(num_train, num_steps)


def _lars_trust_coefficient(config) -> float:
  value = config.lars_trust_coefficient
  if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
    raise ValueError(f"config.lars_trust_coefficient must be > 0, got {value!r}")
  return float(value)


def _positive_int(config, key: str) -> int:
  value = config[key]
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"config.{key} must be a positive integer, got {value!r}")
  return value


def _check_choices(config) -> None:
  """The config's enumerated settings must be among their valid values."""
  if not isinstance(config.steps_per_call, int) or config.steps_per_call < 1:
    raise ValueError(
      f"config.steps_per_call must be an integer >= 1, got {config.steps_per_call!r}"
    )
  for key, valid in (
    ("compute_dtype", COMPUTE_DTYPES),
    ("nonfinite_policy", NONFINITE_POLICIES),
    ("ghost_stats_update", GHOST_STATS_UPDATES),
    ("ghost_draws", GHOST_DRAWS),
  ):
    if config[key] not in valid:
      raise ValueError(f"config.{key}={config[key]!r}; valid: {valid}")


def _batch_sizes(config, variant: Variant, num_devices: int, process_count: int, column):
  """(B_S, B): the base batch and the run's global batch (the script's with a column)."""
  base = _positive_int(config, "base_batch_size")
  large = _positive_int(config, "large_batch_size")
  if config.batch_size is None:
    batch = column.batch_size if column else large if variant.large_batch else base
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
  return base, batch


def _ghost_batch_size(config, variant: Variant, base: int, batch: int, num_devices: int, column):
  """The ghost batch of "gbn" or "gni" (default B_S, or the script's mini-batch), dividing each
  device's batch.

  Hoffer Algorithm 1's ghost batches; for "gni" the noise's equivalent batch
  size (Kosson et al. section 4), one draw per ghost batch of each device.
  """
  if not (variant.ghost_batch_norm or variant.ghost_noise):
    return None
  ghost = base if config.ghost_batch_size is None else _positive_int(config, "ghost_batch_size")
  if column is not None and column.mini_batch_size != ghost:
    if config.ghost_batch_size is not None:
      raise ValueError(
        f"config.ghost_batch_size={ghost}, but under config.script_columns this column runs "
        f"`{column.command}`, whose ghost batch is {column.mini_batch_size}; set "
        "config.ghost_batch_size=None or config.script_columns=False"
      )
    ghost = column.mini_batch_size
  if ghost < 2:
    raise ValueError(f"config.ghost_batch_size={ghost} must be >= 2")
  local = batch // num_devices
  if local % ghost:
    raise ValueError(
      f"ghost_batch_size={ghost} does not divide the per-device batch of {local} "
      f"(batch_size={batch} over {num_devices} devices); choose a ghost size that divides "
      f"{local}"
    )
  return ghost


def _lr_rule(config, variant: Variant, column: ScriptColumn | None) -> str | float:
  """The learning-rate scaling rule: the config's, else the variant's (Hoffer eq. 7).

  With a script column an unscaled variant takes the script's ``--lr_bb_fix``
  (SB's default: sqrt).
  """
  lr_rule = variant.lr_rule
  if column is not None and lr_rule == "none" and column.lr_bb_fix:
    lr_rule = "sqrt"
  lr_rule = lr_rule if config.lr_rule is None else config.lr_rule
  if isinstance(lr_rule, str) and lr_rule not in transforms.LR_RULE_EXPONENTS:
    # An exponent given on the command line, e.g. --config.lr_rule=0.75.
    with contextlib.suppress(ValueError):
      lr_rule = float(lr_rule)
  transforms.lr_scaling_exponent(lr_rule)  # validates
  return lr_rule


def base_drop_epochs(regime_config) -> tuple[float, ...]:
  """The base regime's drop epochs: ``drop_epochs``, or else ``drop_fractions`` x ``epochs``.

  Fractions of training follow a later ``--config.regime.epochs`` override.
  """
  if regime_config.drop_epochs:
    return tuple(regime_config.drop_epochs)
  fractions = tuple(regime_config.drop_fractions or ())
  if any(not 0 < f < 1 for f in fractions):
    raise ValueError(f"config.regime.drop_fractions must lie in (0, 1), got {fractions}")
  # To 1e-6 epoch: a fraction's float error (0.2 * 3 = 0.6000000000000001)
  # must not move a drop across the rounding of epochs to steps.
  return tuple(round(f * regime_config.epochs, 6) for f in fractions)


def _adapted_regime(
  config, variant: Variant, base: int, batch: int, protocol: Protocol, column=None
) -> Regime:
  """The base regime stretched by r with "ra" (Hoffer section 5); lr stays the base rate.

  With main_normal_lr the stretch is main_normal.py's ceil(B / 256); with a
  script column its ``--epochs`` times its stretch (ceil(B / 256) or
  ceil(B / mini) with ``--regime_bb_fix``, else 1).
  """
  regime_config = config.regime
  base_regime = Regime(
    lr=regime_config.lr,
    momentum=regime_config.momentum,
    weight_decay=regime_config.weight_decay,
    epochs=regime_config.epochs,
    drop_epochs=base_drop_epochs(regime_config),
    drop_factor=regime_config.drop_factor,
    nesterov=regime_config.nesterov,
    batch_size=base,
  )
  # The learning rate is scaled by the scale_by_batch_size transform, so the
  # adapted regime keeps the base rate ("none") and only stretches epochs.
  regime = adapt_regime(
    base_regime, batch, lr_rule="none", regime_adaptation=variant.regime_adaptation
  )
  if variant.regime_adaptation and protocol.main_normal_lr:
    stretch = protocol.regime_stretch(batch, base)
    regime = dataclasses.replace(
      regime,
      epochs=base_regime.epochs * stretch,
      drop_epochs=tuple(e * stretch for e in base_regime.drop_epochs),
    )
  if column is not None:
    stretch = column.regime_stretch
    regime = dataclasses.replace(
      regime,
      epochs=column.epochs * stretch,
      drop_epochs=tuple(e * stretch for e in base_regime.drop_epochs),
    )
  if config.num_epochs is not None:
    if not config.num_epochs > 0:
      raise ValueError(f"config.num_epochs must be > 0 or None, got {config.num_epochs!r}")
    regime = dataclasses.replace(regime, epochs=float(config.num_epochs))
  return regime


def _durations(config, variant: Variant, regime: Regime, num_train, num_devices, ghost, partial):
  """(batch phases, number of updates, regime): one phase, or "grow"'s phases at the drops.

  With ``partial`` (a kept partial last batch) the updates are the schedule's
  E ceil(N / B); a growing batch with it is refused.
  """
  batch = regime.batch_size
  if partial and variant.grow_batch:
    raise ValueError(
      f"config.partial_last_batch keeps each epoch's last partial batch at one batch size; "
      f"variant {variant.name!r} grows the batch (not supported together): set "
      "config.partial_last_batch=False"
    )
  if not variant.grow_batch:
    phases = ((0, batch),)
    num_steps = BatchSchedule(phases, num_train if partial else None).num_steps(
      regime.epochs, num_train
    )
  else:
    # Smith et al. 2018: the batch grows at the drops instead; where it reaches
    # batch_growth_max the remaining drops decay the lr (their hybrid).
    grow = growing_batch_phases(
      regime,
      num_train,
      growth_factor=config.batch_growth_factor,
      max_batch_size=config.batch_growth_max,
      multiple_of=num_devices * (ghost or 1),
    )
    phases, num_steps = grow.phases, grow.num_steps
    # The hybrid's lr drops as epochs of the first batch (the schedule's unit).
    steps_per_epoch = num_train / batch
    regime = dataclasses.replace(
      regime, drop_epochs=tuple(step / steps_per_epoch for step in grow.lr_drop_steps)
    )
  if num_steps < 1:
    raise ValueError(
      f"{regime.epochs} epochs of {num_train} examples at batch {batch} is less than one update"
    )
  return phases, num_steps, regime


def _check_partial_batch(num_train, batch, num_devices, process_count, ghost) -> None:
  """The partial batch N mod B must split over the devices (and ghost batches) as a full one.

  No example is dropped or padded: a remainder the devices do not divide is an
  error. With ghost batch norm the partial batch holds the full batch's K
  ghost batches per device (``RunPlan.ghost_batch_size_at``), each of at least
  two examples.
  """
  partial = num_train % batch
  if not partial:
    return
  where = f"the partial last batch of num_train={num_train} at batch_size={batch} has {partial}"
  for count, what in ((num_devices, "devices"), (process_count, "processes")):
    if partial % count:
      raise ValueError(
        f"{where} examples, not divisible by the {count} {what}; use a batch size that "
        f"leaves a multiple of {count}, or config.partial_last_batch=False"
      )
  if ghost is None:
    return
  local, ghosts = partial // num_devices, batch // num_devices // ghost
  if local % ghosts or local // ghosts < 2:
    raise ValueError(
      f"{where} examples, {local} per device; the reference splits it (torch.chunk) into the "
      f"full batch's {ghosts} ghost batches per device, which needs equal ghost batches of at "
      f"least 2 examples: use a batch size or ghost_batch_size for which {ghosts} divides "
      f"{local}, or config.partial_last_batch=False"
    )


def _drop_distances(config) -> tuple[float, ...]:
  """The ||w - w0|| targets of "dist": given, or read from a reference run's log."""
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


def _noise_variance(config, variant: Variant, batch: int, base: int) -> float:
  """Multiplicative noise sigma**2: matched (r - 1, Hoffer section 4) unless given; 0 when off."""
  if not variant.multiplicative_noise:
    return 0.0
  if config.mult_noise_variance is None:
    return matched_noise_variance(batch, base)
  variance = float(config.mult_noise_variance)
  if variance < 0:
    raise ValueError(f"config.mult_noise_variance must be >= 0, got {variance}")
  return variance


def _clipping(config, variant: Variant) -> tuple[float | None, int | None]:
  """(global-norm bound, clipped first steps or None for every step), or (None, None)."""
  if not (variant.clip or config.grad_clip_norm is not None):
    return None, None
  clip_norm = 5.0 if config.grad_clip_norm is None else float(config.grad_clip_norm)
  if not clip_norm > 0:
    raise ValueError(f"config.grad_clip_norm must be > 0, got {config.grad_clip_norm!r}")
  clip_steps = config.grad_clip_steps
  if clip_steps is not None and (not isinstance(clip_steps, int) or clip_steps < 0):
    raise ValueError(f"config.grad_clip_steps must be an integer >= 0 or None, got {clip_steps!r}")
  return clip_norm, clip_steps


def lr_schedule(plan: RunPlan) -> optax.Schedule:
  """The scheduled learning rate: the regime's schedule times (B / B_base)**p.

  With "dist" the distance-triggered drops multiply this on device (the step
  logs the product).
  """
  base = plan.regime.schedule(plan.steps_per_epoch)
  scale = transforms.batch_size_scale_schedule(plan.lr_batch_size(), plan.lr_base, plan.lr_rule)
  if plan.warmup_steps:
    warmup = gradual_warmup(plan.lr_scale, plan.warmup_steps)
    return lambda step: base(step) * scale(step) * warmup(step)
  return lambda step: base(step) * scale(step)
