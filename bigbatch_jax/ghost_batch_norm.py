"""Ghost Batch Normalization (Hoffer et al. 2017, Algorithm 1): the training path and linen module.

The ghost statistics and the normalization (:mod:`bigbatch_jax.ghost_batches`)
and the closed-form running update (:mod:`bigbatch_jax.running_statistics`)
are plain functions, shared by the flax.linen module below and the Flax NNX
front end (:mod:`bigbatch_jax.nnx`) through :func:`ghost_batch_norm_train`:
one implementation, two thin front ends. The functions are importable from
here too.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax.linen import initializers, module
from flax.linen.module import Module, compact

from bigbatch_jax.ghost_batches import GHOST_VARIANCES as GHOST_VARIANCES
from bigbatch_jax.ghost_batches import STATS_UPDATES as STATS_UPDATES
from bigbatch_jax.ghost_batches import GhostOptions as GhostOptions
from bigbatch_jax.ghost_batches import canonical_axes as canonical_axes
from bigbatch_jax.ghost_batches import check_options as check_options
from bigbatch_jax.ghost_batches import feature_axes_of as feature_axes_of
from bigbatch_jax.ghost_batches import ghost_statistics as ghost_statistics
from bigbatch_jax.ghost_batches import ghost_view as ghost_view
from bigbatch_jax.ghost_batches import normalize as normalize
from bigbatch_jax.ghost_batches import normalize_ghosts as normalize_ghosts
from bigbatch_jax.ghost_batches import num_ghost_batches as num_ghost_batches
from bigbatch_jax.running_statistics import ghost_running_average as ghost_running_average
from bigbatch_jax.running_statistics import update_running_statistics as update_running_statistics
from bigbatch_jax.running_variance import check_running_variance, running_variance_factor


def ghost_batch_norm_train(
  x: jax.Array,
  scale: jax.Array | None,
  bias: jax.Array | None,
  feature_axes: tuple[int, ...],
  options: GhostOptions,
  *,
  num_ghosts: int,
  mask: jax.Array | None = None,
  normalize_ghosts_fn: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode (ghost) batch norm of ``x``, for the linen and NNX front ends.

  ``x`` is split into ``num_ghosts`` contiguous ghost batches, each normalized
  by its own mean and biased variance (Hoffer et al. Algorithm 1). Without a
  ghost size it is flax's BatchNorm, the statistics averaged over
  ``options.axis_name``; ghost batches never cross devices. One ghost batch
  goes through :func:`normalize` (flax's operations, bit for bit), several
  through ``normalize_ghosts_fn(ghosts, mean, var, scale, bias, feature_axes)``
  (default :func:`normalize_ghosts`).

  Returns:
    ``(y, mean, var)``: the output, of the shape of ``x``, and each ghost
    batch's statistics in order, shape (num_ghosts, features), as
    :func:`update_running_statistics` takes them.
  """
  ghosts, mask, reduction_axes, ghost_feature_axes = ghost_view(x, num_ghosts, feature_axes, mask)
  mean, var = ghost_statistics(
    ghosts,
    reduction_axes,
    plain=options.ghost_batch_size is None,
    ghost_variance=options.ghost_variance,
    dtype=options.dtype,
    use_fast_variance=options.use_fast_variance,
    mask=mask,
    force_float32_reductions=options.force_float32_reductions,
    axis_name=options.axis_name,
    axis_index_groups=options.axis_index_groups,
  )
  dtype, epsilon = options.dtype, options.epsilon
  if num_ghosts == 1:
    y = normalize(
      ghosts, mean, var, scale, bias, reduction_axes, ghost_feature_axes, dtype, epsilon
    )
  elif normalize_ghosts_fn is None:
    y = normalize_ghosts(ghosts, mean, var, scale, bias, ghost_feature_axes, dtype, epsilon)
  else:
    y = normalize_ghosts_fn(ghosts, mean, var, scale, bias, ghost_feature_axes)
  return y.reshape(x.shape), mean.reshape((num_ghosts, -1)), var.reshape((num_ghosts, -1))


class _CallVariables(NamedTuple):
  """What a linen call reads: its mode, the feature axes and the layer's variables."""

  use_running_average: bool
  feature_axes: tuple[int, ...]
  ra_mean: Any  # the batch_stats "mean" flax Variable
  ra_var: Any  # the batch_stats "var" flax Variable
  scale: jax.Array | None
  bias: jax.Array | None


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
  batch_stats ``mean``/``var``. The running variance is the biased one, as in
  flax, or with ``running_variance="unbiased"`` PyTorch's: n / (n - 1) times
  each ghost batch's variance (n its examples) enters the running average,
  while the batch is still normalized by the biased one (the bigBatch
  reference code's convention). ``momentum`` follows flax: the
  decay of the moving average (PyTorch momentum 0.1 is flax momentum 0.9).

  During initialization the running statistics are not updated; if the
  initialization batch is not a multiple of ``ghost_batch_size`` (e.g. a batch
  of 1 for ``model.init``) it is normalized as one batch, since only shapes
  matter then. In training a ghost size that does not divide the batch is an
  error.

  The other attributes (``use_running_average``, ``axis``, ``momentum``,
  ``epsilon``, ``dtype``, ``param_dtype``, ``use_bias``, ``use_scale``,
  ``bias_init``, ``scale_init``, ``axis_name``, ``axis_index_groups``,
  ``use_fast_variance``, ``force_float32_reductions``) are those of
  ``flax.linen.BatchNorm``.

  Attributes:
    ghost_batch_size: examples per ghost batch (>= 2), or None for plain batch
      normalization.
    stats_update: ``"sequential"`` or ``"mean"``, see above.
    ghost_variance: how ghost batches compute their variance (see
      :func:`ghost_statistics`): ``"shifted"`` (default; one pass, accurate
      when the mean is large against the spread), ``"two_pass"`` or
      ``"one_pass"`` (``E[x^2] - E[x]^2``, what flax's fast variance does; it
      cancels to 0 in float32 at a mean of 3000 std). Plain batch norm
      (``ghost_batch_size=None``) follows ``use_fast_variance``, as flax.
    running_variance: ``"biased"`` (default, flax) or ``"unbiased"`` (PyTorch),
      the variance the running average keeps, see above.

  Examples:
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
  ghost_variance: str = "shifted"
  running_variance: str = "biased"

  def __new__(cls, *args, **kwargs):
    # NNX's constructor (num_features first, rngs=...) reaches this linen
    # dataclass as use_running_average=512 or an unknown keyword: say which
    # class was meant before the dataclass fails or takes the number silently.
    nnx_style = "rngs" in kwargs or "num_features" in kwargs
    if nnx_style or (args and not isinstance(args[0], bool | None)):
      raise TypeError(
        "bigbatch_jax.GhostBatchNorm is the flax.linen module (arguments as nn.BatchNorm, no "
        f"num_features or rngs); it got positional {args!r} and keywords {sorted(kwargs)}. "
        "For Flax NNX use bigbatch_jax.nnx.GhostBatchNorm(num_features, ghost_batch_size=..., "
        "rngs=nnx.Rngs(0))"
      )
    return super().__new__(cls)

  def _call_variables(self, x, use_running_average: bool | None) -> _CallVariables:
    """The call's mode, feature axes, running statistics' variables and scale and bias.

    The mode merges the attribute and the argument as flax does; the variables
    are created in the order and with the dtypes of flax's ``BatchNorm``: the
    batch_stats ``mean``/``var``, then the params as ``_normalize`` creates them.
    """
    use_running_average = module.merge_param(
      "use_running_average", self.use_running_average, use_running_average
    )
    feature_axes = feature_axes_of(x, self.axis)
    feature_shape = [x.shape[ax] for ax in feature_axes]
    stats_dtype = jnp.float32 if self.force_float32_reductions else self.param_dtype
    ra_mean = self.variable(
      "batch_stats", "mean", lambda s: jnp.zeros(s, stats_dtype), feature_shape
    )
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, stats_dtype), feature_shape)
    params = []
    for use, name, init in (
      (self.use_scale, "scale", self.scale_init),
      (self.use_bias, "bias", self.bias_init),
    ):
      if not use:
        params.append(None)
        continue
      value = self.param(name, init, feature_shape, self.param_dtype)
      if not self.force_float32_reductions:
        value = jnp.asarray(value, self.param_dtype)
      params.append(value)
    return _CallVariables(use_running_average, feature_axes, ra_mean, ra_var, *params)

  def _normalize_by_running_average(self, x, call: _CallVariables):
    """Inference: ``x`` normalized by the running statistics, as ``nn.BatchNorm``."""
    feature_axes = call.feature_axes
    reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
    mean, var = call.ra_mean.value, call.ra_var.value
    if not self.force_float32_reductions:
      mean, var = jnp.asarray(mean, self.param_dtype), jnp.asarray(var, self.param_dtype)
    return normalize(
      x, mean, var, call.scale, call.bias, reduction_axes, feature_axes, self.dtype, self.epsilon
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
    check_options(self.ghost_batch_size, self.stats_update, self.ghost_variance)
    check_running_variance(self.running_variance)
    call = self._call_variables(x, use_running_average)
    if call.use_running_average:
      return self._normalize_by_running_average(x, call)
    feature_axes, ra_mean, ra_var = call.feature_axes, call.ra_mean, call.ra_var

    initializing = self.is_initializing()
    options = GhostOptions.of(self)
    if initializing:
      # Only shapes matter: no cross-device statistics and no running update.
      options = options._replace(axis_name=None)
    y, mean, var = ghost_batch_norm_train(
      x,
      call.scale,
      call.bias,
      feature_axes,
      options,
      num_ghosts=num_ghost_batches(x.shape[0], self.ghost_batch_size, initializing),
      mask=mask,
      normalize_ghosts_fn=self._normalize_ghosts,
    )
    if not initializing:
      factor = running_variance_factor(x.shape, mean.shape[0], feature_axes, options, mask)
      ra_mean.value, ra_var.value = update_running_statistics(
        ra_mean.value, ra_var.value, mean, var, options, factor
      )
    return y

  def _normalize_ghosts(self, ghosts, mean, var, scale, bias, feature_axes):
    """The ghost path's normalization (a method so benchmarks can swap it)."""
    return normalize_ghosts(ghosts, mean, var, scale, bias, feature_axes, self.dtype, self.epsilon)
