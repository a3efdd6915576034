"""Batch norm's running statistics after ghost batches (Hoffer et al. 2017, Algorithm 1).

The running mean and variance take one moving-average step per ghost batch,
in order, as the ghost batches' batch-norm calls would one after another; in
closed form, one ``psum`` across devices. Both front ends (linen and NNX) and
Ghost Noise Injection update their running statistics here.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from bigbatch_jax.ghost_batches import GhostOptions


def ghost_running_average(
  running: jax.Array,
  ghost_stats: jax.Array,
  momentum: float,
  stats_update: str = "sequential",
  axis_name: str | None = None,
  axis_index_groups: Any = None,
) -> jax.Array:
  """Updates a running statistic with the statistics of K ghost batches.

  ``"sequential"`` applies the exponential moving average once per ghost
  batch, in order, in closed form:

      new = m**K running + (1 - m) sum_{k=1..K} m**(K-k) stat_k,

  exactly what K batch-norm calls one after another do (the bigBatch reference
  code). ``"mean"`` applies one step with the mean of the ghost statistics
  (Keras' ``virtual_batch_size``), which Hoffer et al. found to generalize worse
  (section 4).

  With ``axis_name`` the ghost batches of all devices count, in device order, as
  if one device held the whole batch. The rule is linear in the statistics, so
  device d contributes its own sum weighted by m**(K * (N - 1 - d)) and one
  ``psum`` of C floats combines them; the result is identical on every replica.

  Args:
    running: the running statistic, shape (C,).
    ghost_stats: this device's ghost-batch statistics in order, shape (K, C).
    momentum: the decay m of the moving average (flax convention).
    stats_update: ``"sequential"`` or ``"mean"``.
    axis_name: the data-parallel axis, or None on one device.
    axis_index_groups: optional device groups, as for ``lax.psum``.

  Returns:
    The new running statistic, shape (C,).
  """
  num_ghosts = ghost_stats.shape[0]
  if stats_update == "mean":
    mean = jnp.mean(ghost_stats, axis=0)
    if axis_name is not None:
      mean = lax.pmean(mean, axis_name, axis_index_groups=axis_index_groups)
    return momentum * running + (1 - momentum) * mean
  decay = momentum ** jnp.arange(num_ghosts - 1, -1, -1, dtype=jnp.float32)
  local = jnp.tensordot(((1 - momentum) * decay).astype(ghost_stats.dtype), ghost_stats, axes=1)
  if axis_name is None:
    return momentum**num_ghosts * running + local
  num_devices = lax.psum(1, axis_name, axis_index_groups=axis_index_groups)
  position = _position_in_group(axis_name, axis_index_groups)
  later_ghosts = num_ghosts * (num_devices - 1 - position)
  total = lax.psum(
    momentum ** later_ghosts.astype(jnp.float32) * local,
    axis_name,
    axis_index_groups=axis_index_groups,
  )
  return momentum ** (num_ghosts * num_devices) * running + total


def _position_in_group(axis_name: str, axis_index_groups: Any) -> jax.Array:
  """This device's position along ``axis_name`` within its index group."""
  index = lax.axis_index(axis_name)
  if axis_index_groups is None:
    return index
  table = {device: pos for group in axis_index_groups for pos, device in enumerate(group)}
  return jnp.asarray([table[i] for i in range(len(table))])[index]


def update_running_statistics(
  running_mean: jax.Array,
  running_var: jax.Array,
  mean: jax.Array,
  var: jax.Array,
  options: GhostOptions,
  variance_factor: Any = None,
) -> tuple[jax.Array, jax.Array]:
  """The running mean and variance after the ghost statistics (K, features) of one call.

  :func:`ghost_running_average` on each; plain batch norm's statistics are
  already averaged across devices, so only ghost statistics are combined over
  ``options.axis_name``. ``variance_factor`` (:func:`running_variance_factor`)
  multiplies the variances that enter the average (None: 1). The results keep
  the shapes of the running statistics.
  """
  if variance_factor is not None:
    var = var * variance_factor
  update = functools.partial(
    ghost_running_average,
    momentum=options.momentum,
    stats_update=options.stats_update,
    axis_name=None if options.ghost_batch_size is None else options.axis_name,
    axis_index_groups=options.axis_index_groups,
  )
  return (
    update(running_mean.reshape(-1), mean).reshape(running_mean.shape),
    update(running_var.reshape(-1), var).reshape(running_var.shape),
  )
