"""Everything a run derives from its config, computed and checked before any compute.

The learning rate, the schedule, the epochs, the ghost size and the noise are
derived here from the base regime, the batch sizes and the variant, never in
``get_config``: a ``--config.batch_size=...`` or ``--config.regime.epochs=...``
override therefore keeps them consistent (the STYLE guide's rule). The plan is
made once per run and then only read. The sizes (batches, ghost size,
updates) are derived in :mod:`~bigbatch_jax.training.plan_sizes`; the plan
itself, :class:`RunPlan`, and :func:`lr_schedule` live in
:mod:`~bigbatch_jax.training.run_plan` and are importable from here.
"""

from __future__ import annotations

import contextlib
import dataclasses

import ml_collections

from bigbatch_jax import transforms
from bigbatch_jax.data.schedule import BatchSchedule
from bigbatch_jax.noise import matched_noise_variance
from bigbatch_jax.protocol import Protocol, RunKind, column_of, resolve_protocol
from bigbatch_jax.reference_columns import ScriptColumn
from bigbatch_jax.regimes import LR_DECAYS, Regime, adapt_regime
from bigbatch_jax.training.metrics import distances_at_drops
from bigbatch_jax.training.plan_sizes import (
  batch_sizes_of,
  check_partial_batch,
  check_validation_split,
  durations_of,
  ghost_batch_size_of,
)
from bigbatch_jax.training.run_plan import RunPlan as RunPlan
from bigbatch_jax.training.run_plan import lr_schedule as lr_schedule
from bigbatch_jax.training.variants import Variant, parse_variant


def make_plan(
  config: ml_collections.ConfigDict,
  num_train: int,
  num_devices: int,
  process_count: int = 1,
  protocol: Protocol | None = None,
) -> RunPlan:
  """Derives and validates the run's sizes, regime and remedies from its config.

  Args:
    config: the run config (see bigbatch_jax/configs/default.py).
    num_train: the number of training examples.
    num_devices: devices over which the batch is split (all processes).
    process_count: JAX processes; each loads its share of every batch.
    protocol: the run's protocol, when already resolved (the loop resolves it
      once, before loading the data); None: ``resolve_protocol(config)``.

  Returns:
    A :class:`RunPlan`, carrying the protocol.
  """
  if num_train <= 0:
    raise ValueError(f"the training set is empty (num_train={num_train})")
  variant = parse_variant(config.variant)
  protocol = resolve_protocol(config) if protocol is None else protocol
  run = RunKind.of(variant, config.regime.momentum)
  column = column_of(protocol, config, variant)
  base, batch = batch_sizes_of(config, variant, num_devices, process_count, column)
  ghost = ghost_batch_size_of(config, variant, base, batch, num_devices, column)
  regime = _adapted_regime(config, variant, base, batch, protocol, column)
  # By the reference protocol's default a growing batch (no script grows one) keeps whole epochs.
  partial = protocol.applies("partial_last_batch", run)
  batch_phases, num_steps, regime = durations_of(
    config, variant, regime, num_train, num_devices, ghost, partial
  )
  if partial:
    check_partial_batch(num_train, batch, num_devices, process_count, ghost)
  check_validation_split(config, num_train, batch_phases)
  lr_decay = _lr_decay(config, variant)
  if lr_decay == "poly":
    regime = dataclasses.replace(regime, drop_epochs=())  # the polynomial decay instead
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
    lr_decay=lr_decay,
    poly_warmup_steps=_poly_warmup_steps(config, lr_decay, num_train, schedule, num_steps),
    poly_power=float(config.regime.poly_power),
    momentum_restart_steps=(
      schedule.epoch_first_steps(num_train, num_steps)
      if protocol.applies("momentum_restart", run)
      else ()
    ),
    lars_trust_coefficient=_lars_trust_coefficient(config),
    noise_alpha=_non_negative(config, "noise_alpha"),
    noise_gamma=_non_negative(config, "noise_gamma"),
    bn_scale_uniform=protocol.bn_scale_uniform,
    partial_last_batch=partial,
    running_variance=(
      "unbiased" if protocol.applies("unbiased_running_variance", run) else "biased"
    ),
    script_command=column.command if column else "",
    protocol=protocol,
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


def _lr_decay(config, variant: Variant) -> str:
  """``config.regime.decay`` checked against the variant ("poly" has no drops to grow at)."""
  decay = config.regime.decay
  if decay not in LR_DECAYS:
    raise ValueError(f"config.regime.decay={decay!r}; valid: {LR_DECAYS}")
  if decay == "poly" and (variant.grow_batch or variant.distance_drops):
    raise ValueError(
      f"config.regime.decay='poly' has no drops, which variant {variant.name!r} grows the batch "
      "or triggers at; use regime.decay='steps'"
    )
  power = config.regime.poly_power
  if isinstance(power, bool) or not isinstance(power, int | float) or not power > 0:
    raise ValueError(f"config.regime.poly_power must be > 0, got {power!r}")
  return decay


def _poly_warmup_steps(config, decay: str, num_train: int, schedule, num_steps: int) -> int:
  """Updates of the "poly" schedule's warmup (0 for "steps"); it must end before the run."""
  if decay != "poly":
    return 0
  epochs = config.regime.poly_warmup_epochs
  if isinstance(epochs, bool) or not isinstance(epochs, int | float) or epochs < 0:
    raise ValueError(f"config.regime.poly_warmup_epochs must be >= 0, got {epochs!r}")
  steps = schedule.num_steps(epochs, num_train) if epochs else 0
  if steps >= num_steps:
    raise ValueError(
      f"config.regime.poly_warmup_epochs={epochs} is {steps} updates, not fewer than the run's "
      f"{num_steps}; use a shorter warmup"
    )
  return steps


def _lars_trust_coefficient(config) -> float:
  value = config.lars_trust_coefficient
  if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
    raise ValueError(f"config.lars_trust_coefficient must be > 0, got {value!r}")
  return float(value)


def _non_negative(config, key: str) -> float:
  value = config[key]
  if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
    raise ValueError(f"config.{key}={value!r}; valid: a number >= 0")
  return float(value)


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
