"""The sizes a run plan derives: batch sizes, the ghost size, the updates and batch phases.

Each is derived from the config, the variant and the devices, checked, and
refused with a message naming the value and what would be valid (no example
is silently dropped or padded). :func:`bigbatch_jax.training.plan.make_plan`
calls them.
"""

from __future__ import annotations

import dataclasses

from bigbatch_jax.data.schedule import BatchSchedule
from bigbatch_jax.regimes import Regime, growing_batch_phases
from bigbatch_jax.training.variants import Variant


def positive_int(config, key: str) -> int:
  """``config[key]``, which must be a positive integer (an error naming it otherwise)."""
  value = config[key]
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"config.{key} must be a positive integer, got {value!r}")
  return value


def batch_sizes_of(config, variant: Variant, num_devices: int, process_count: int, column):
  """(B_S, B): the base batch and the run's global batch (the script's with a column)."""
  base = positive_int(config, "base_batch_size")
  large = positive_int(config, "large_batch_size")
  if config.batch_size is None:
    batch = column.batch_size if column else large if variant.large_batch else base
  else:
    batch = positive_int(config, "batch_size")
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


def ghost_batch_size_of(config, variant: Variant, base: int, batch: int, num_devices: int, column):
  """The ghost batch of "gbn" or "gni" (default B_S, or the script's mini-batch), dividing each
  device's batch.

  Hoffer Algorithm 1's ghost batches; for "gni" the noise's equivalent batch
  size (Kosson et al. section 4), one draw per ghost batch of each device.
  """
  if not (variant.ghost_batch_norm or variant.ghost_noise):
    return None
  ghost = base if config.ghost_batch_size is None else positive_int(config, "ghost_batch_size")
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


def durations_of(config, variant: Variant, regime: Regime, num_train, num_devices, ghost, partial):
  """(batch phases, number of updates, regime): one phase, or "grow"'s phases at the drops.

  With ``partial`` (a kept partial last batch) the updates are the schedule's
  E ceil(N / B); the protocol keeps it off a growing batch (``Protocol.applies``).
  """
  batch = regime.batch_size
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


def check_partial_batch(num_train, batch, num_devices, process_count, ghost) -> None:
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


def check_validation_split(config, num_train: int, batch_phases) -> None:
  """With a validation split, the kept training set must hold the run's largest batch."""
  largest = max(size for _, size in batch_phases)
  if config.validation_fraction and num_train < largest:
    raise ValueError(
      f"config.validation_fraction={config.validation_fraction} keeps {num_train} training "
      f"examples, fewer than the run's batch of {largest}; use a smaller fraction or batch"
    )
