"""Ghost Batch Normalization (Hoffer et al. 2017, Algorithm 1) for flax.linen."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax.linen import dtypes, initializers, module
from flax.linen.module import Module, compact

# flax's own statistics and normalization code, so that with one ghost batch
# the outputs and running statistics are those of nn.BatchNorm to the bit.
from flax.linen.normalization import _canonicalize_axes, _compute_stats, _normalize
from jax import lax

STATS_UPDATES = ("sequential", "mean")


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


class GhostBatchNorm(Module):
  """Batch normalization over small "ghost" batches; a drop-in for ``nn.BatchNorm``.

  Hoffer et al. (section 4, Algorithm 1) compute batch-norm statistics on
  small virtual ("ghost") batches of a large batch instead of on the whole
  batch, which recovers much of the generalization of small-batch training.

  Training (``use_running_average=False``): the local batch (axis 0) is split
  into contiguous ghost batches of ``ghost_batch_size`` examples, each
  normalized by its own mean and (biased) variance in one vectorized
  computation. The running statistics are updated from the ghost statistics
  with ``stats_update``:

  * ``"sequential"`` (default, the paper's rule): one moving-average step per
    ghost batch, in order, in closed form (:func:`ghost_running_average`).
  * ``"mean"``: one step with the mean of the ghost statistics (Keras).

  Inference (``use_running_average=True``) uses the running statistics only,
  at any batch size, exactly like ``nn.BatchNorm``.

  Data parallelism (``axis_name`` under ``jax.shard_map`` or ``jax.pmap``):
  ghost batches are formed inside each device's batch and are never merged
  across devices, so the outputs do not depend on the device count. The few
  floats of ghost statistics of all devices are gathered in device order and
  the running-statistics rule is applied over all of them: N devices with local
  batch b hold exactly the running statistics of one device with batch N * b,
  the same on every replica. This differs from ``nn.BatchNorm`` with
  ``axis_name``, whose batch statistics are averaged across devices.

  With ``ghost_batch_size=None`` the module is ``nn.BatchNorm``: statistics of
  the whole local batch, averaged across ``axis_name`` if one is given, the
  same parameters, variables and outputs.

  Variables are those of ``nn.BatchNorm``: params ``scale``/``bias`` and
  batch_stats ``mean``/``var`` (the running variance is the biased one, as in
  flax; PyTorch keeps the unbiased variance). ``momentum`` follows flax: the
  decay of the moving average (PyTorch momentum 0.1 is flax momentum 0.9).

  During initialization the running statistics are not updated; if the
  initialization batch is not a multiple of ``ghost_batch_size`` (e.g. a batch
  of 1 for ``model.init``) it is normalized as one batch, since only shapes
  matter then. In training a ghost size that does not divide the batch is an
  error.

  Attributes:
    ghost_batch_size: examples per ghost batch (>= 2), or None for plain batch
      normalization.
    stats_update: ``"sequential"`` or ``"mean"``, see above.
    use_running_average, axis, momentum, epsilon, dtype, param_dtype, use_bias,
    use_scale, bias_init, scale_init, axis_name, axis_index_groups,
    use_fast_variance, force_float32_reductions: as ``flax.linen.BatchNorm``.

  Example:
    >>> import functools, jax, jax.numpy as jnp
    >>> norm = GhostBatchNorm(ghost_batch_size=4, momentum=0.9)
    >>> x = jax.random.normal(jax.random.key(0), (16, 3))
    >>> variables = norm.init(jax.random.key(1), x, use_running_average=False)
    >>> y, updates = norm.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    >>> y.shape
    (16, 3)

  References:
    Hoffer, Hubara, Soudry 2017, "Train longer, generalize better", section 4,
    Algorithm 1.
  """

  use_running_average: bool | None = None
  axis: int = -1
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Any = initializers.zeros
  scale_init: Any = initializers.ones
  axis_name: str | None = None
  axis_index_groups: Any = None
  use_fast_variance: bool = True
  force_float32_reductions: bool = True
  ghost_batch_size: int | None = None
  stats_update: str = "sequential"

  def _check_config(self):
    if self.stats_update not in STATS_UPDATES:
      raise ValueError(
        f"GhostBatchNorm: unknown stats_update={self.stats_update!r}; "
        f"valid values are {STATS_UPDATES}"
      )
    if self.ghost_batch_size is not None and (
      not isinstance(self.ghost_batch_size, int) or self.ghost_batch_size < 2
    ):
      raise ValueError(
        f"GhostBatchNorm: ghost_batch_size={self.ghost_batch_size!r} must be an integer >= 2 "
        "(a ghost batch of one example has zero variance) or None for plain batch norm"
      )

  def _num_ghosts(self, batch: int) -> int:
    ghost = self.ghost_batch_size
    if ghost is None:
      return 1
    if batch % ghost == 0:
      return batch // ghost
    if self.is_initializing():
      return 1
    raise ValueError(
      f"GhostBatchNorm: ghost_batch_size={ghost} does not divide the local batch of "
      f"{batch} examples (the per-device batch under data parallelism); use a ghost "
      f"size that divides {batch}, or a batch that is a multiple of {ghost}"
    )

  @compact
  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    """Normalizes ``x`` with ghost-batch (training) or running (inference) statistics.

    Args:
      x: the input; axis 0 is the batch.
      use_running_average: use the running statistics instead of the batch's.
      mask: optional, broadcastable to ``x``: which entries count in the
        statistics (as ``nn.BatchNorm``).

    Returns:
      The normalized input, of the shape of ``x``.
    """
    self._check_config()
    use_running_average = module.merge_param(
      "use_running_average", self.use_running_average, use_running_average
    )
    feature_axes = _canonicalize_axes(x.ndim, self.axis)
    if 0 in feature_axes:
      raise ValueError(
        f"GhostBatchNorm: axis={self.axis} includes the batch axis 0 of an input of shape "
        f"{x.shape}; ghost batches are split along axis 0"
      )
    feature_shape = [x.shape[ax] for ax in feature_axes]
    stats_dtype = jnp.float32 if self.force_float32_reductions else self.param_dtype
    ra_mean = self.variable(
      "batch_stats", "mean", lambda s: jnp.zeros(s, stats_dtype), feature_shape
    )
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, stats_dtype), feature_shape)

    if use_running_average:
      reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
      mean, var = ra_mean.value, ra_var.value
      if not self.force_float32_reductions:
        mean, var = jnp.asarray(mean, self.param_dtype), jnp.asarray(var, self.param_dtype)
      return self._normalize(x, mean, var, reduction_axes, feature_axes)

    # View the batch as (ghosts, ghost_batch_size, ...): statistics of each
    # ghost batch reduce over every axis but the ghost index and the features.
    num_ghosts = self._num_ghosts(x.shape[0])
    ghosts = x.reshape((num_ghosts, x.shape[0] // num_ghosts, *x.shape[1:]))
    ghost_feature_axes = tuple(ax + 1 for ax in feature_axes)
    ghost_reduction_axes = tuple(i for i in range(1, ghosts.ndim) if i not in ghost_feature_axes)
    if mask is not None:
      mask = jnp.broadcast_to(mask, x.shape).reshape(ghosts.shape)
    # Plain batch norm (one ghost, no ghost size) averages over devices like
    # nn.BatchNorm; ghost batches never cross devices.
    plain = self.ghost_batch_size is None
    mean, var = _compute_stats(
      ghosts,
      ghost_reduction_axes,
      dtype=self.dtype,
      axis_name=self.axis_name if plain and not self.is_initializing() else None,
      axis_index_groups=self.axis_index_groups,
      use_fast_variance=self.use_fast_variance,
      mask=mask,
      force_float32_reductions=self.force_float32_reductions,
    )
    mean_k = mean.reshape((num_ghosts, -1))
    var_k = var.reshape((num_ghosts, -1))

    if not self.is_initializing():
      # Plain batch norm already averaged its statistics across devices.
      axis_name = None if plain else self.axis_name
      update = functools.partial(
        ghost_running_average,
        momentum=self.momentum,
        stats_update=self.stats_update,
        axis_name=axis_name,
        axis_index_groups=self.axis_index_groups,
      )
      ra_mean.value = update(ra_mean.value.reshape(-1), mean_k).reshape(feature_shape)
      ra_var.value = update(ra_var.value.reshape(-1), var_k).reshape(feature_shape)

    if num_ghosts == 1:
      y = self._normalize(ghosts, mean, var, ghost_reduction_axes, ghost_feature_axes)
    else:
      y = self._normalize_ghosts(ghosts, mean, var, ghost_feature_axes)
    return y.reshape(x.shape)

  def _normalize_ghosts(self, ghosts, mean, var, feature_axes):
    """Normalizes each ghost batch with its statistics in one affine pass.

    The statistics and the learned scale and bias fold first into a small
    per-ghost, per-feature map, ``mul = scale * rsqrt(var + eps)`` and
    ``shift = bias - mean * mul``, and then ``y = x * mul + shift`` touches the
    activations once. flax's ``_normalize`` computes ``(x - mean) * mul + bias``
    instead; differentiated, that keeps ``x - mean`` and the scaled product as
    full-size residuals for the backward pass, which costs two extra passes over
    the activations per layer (measured by experiments/benchmarks). The two
    agree up to float rounding; a single ghost batch keeps flax's code so that
    it stays identical to ``nn.BatchNorm``. Parameters, their order and dtypes
    are those of ``_normalize``.
    """
    feature_shape = [ghosts.shape[ax] for ax in feature_axes]
    # Statistics come as (ghosts, *features); broadcast them over the rest.
    stats_shape = [ghosts.shape[0]] + [
      ghosts.shape[i] if i in feature_axes else 1 for i in range(1, ghosts.ndim)
    ]
    params_shape = [1, *stats_shape[1:]]
    mul = lax.rsqrt(var.reshape(stats_shape) + self.epsilon)
    args = [ghosts]
    if self.use_scale:
      scale = self.param("scale", self.scale_init, feature_shape, self.param_dtype)
      scale = scale.reshape(params_shape)
      if not self.force_float32_reductions:
        scale = jnp.asarray(scale, self.param_dtype)
      mul = mul * scale
      args.append(scale)
    shift = -mean.reshape(stats_shape) * mul
    if self.use_bias:
      bias = self.param("bias", self.bias_init, feature_shape, self.param_dtype)
      bias = bias.reshape(params_shape)
      if not self.force_float32_reductions:
        bias = jnp.asarray(bias, self.param_dtype)
      shift = shift + bias
      args.append(bias)
    y = ghosts * mul + shift
    return jnp.asarray(y, dtypes.canonicalize_dtype(*args, dtype=self.dtype))

  def _normalize(self, x, mean, var, reduction_axes, feature_axes):
    return _normalize(
      self,
      x,
      mean,
      var,
      reduction_axes,
      feature_axes,
      self.dtype,
      self.param_dtype,
      self.epsilon,
      self.use_bias,
      self.use_scale,
      self.bias_init,
      self.scale_init,
      self.force_float32_reductions,
    )
