"""Ghost Batch Normalization (Hoffer et al. 2017, Algorithm 1): the math and the linen module.

The ghost statistics, the normalization and the closed-form running update are
plain functions here, shared by the flax.linen module below and the Flax NNX
front end (:mod:`bigbatch_jax.nnx`): one implementation, two thin front ends.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax.linen import dtypes, initializers, module
from flax.linen.module import Module, compact
from jax import lax

from bigbatch_jax._compat import compute_stats
from bigbatch_jax.running_variance import check_running_variance, running_variance_factor

STATS_UPDATES = ("sequential", "mean")
GHOST_VARIANCES = ("shifted", "two_pass", "one_pass")


def canonical_axes(ndim: int, axes: int | Iterable[int]) -> tuple[int, ...]:
  """Non-negative, sorted, deduplicated axes of an array of rank ``ndim``."""
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  return tuple(sorted({ax + ndim if ax < 0 else ax for ax in axes}))


def check_options(ghost_batch_size: Any, stats_update: str, ghost_variance: str) -> None:
  """Raises ValueError naming the bad option and the valid ones."""
  if stats_update not in STATS_UPDATES:
    raise ValueError(
      f"GhostBatchNorm: unknown stats_update={stats_update!r}; valid values are {STATS_UPDATES}"
    )
  if ghost_variance not in GHOST_VARIANCES:
    raise ValueError(
      f"GhostBatchNorm: unknown ghost_variance={ghost_variance!r}; valid values are "
      f"{GHOST_VARIANCES}"
    )
  if ghost_batch_size is not None and (
    not isinstance(ghost_batch_size, int)
    or isinstance(ghost_batch_size, bool)
    or ghost_batch_size < 2
  ):
    raise ValueError(
      f"GhostBatchNorm: ghost_batch_size={ghost_batch_size!r} must be an integer >= 2 "
      "(a ghost batch of one example has zero variance) or None for plain batch norm"
    )


def num_ghost_batches(batch: int, ghost_batch_size: int | None, initializing: bool = False) -> int:
  """How many ghost batches a local batch of ``batch`` examples holds.

  While initializing (only shapes matter) a batch the ghost size does not divide
  is one batch; in training it is an error that names both sizes.
  """
  if ghost_batch_size is None:
    return 1
  if batch % ghost_batch_size == 0:
    return batch // ghost_batch_size
  if initializing:
    return 1
  raise ValueError(
    f"GhostBatchNorm: ghost_batch_size={ghost_batch_size} does not divide the local batch of "
    f"{batch} examples (the per-device batch under data parallelism); use a ghost "
    f"size that divides {batch}, or a batch that is a multiple of {ghost_batch_size}"
  )


def _shifted_statistics(ghosts: jax.Array, reduction_axes: tuple[int, ...], dtype: Any):
  """Per-ghost mean and biased variance in one pass over ``ghosts - shift``.

  ``E[x^2] - E[x]^2`` in float32 cancels when the mean is large against the
  spread (at mean 3000, std 1 the variance comes out 0). Shifting each ghost
  batch by one of its own values s (its first example, per feature) leaves the
  variance unchanged, ``var = E[(x - s)^2] - E[x - s]^2``, while ``|E[x - s]|``
  is of the order of the spread, so nothing cancels; it still reads the
  activations once (the two-pass variance reads them twice). The variance does
  not depend on s, so s carries no gradient.
  """
  x = ghosts.astype(dtype)
  first = tuple(slice(0, 1) if i in reduction_axes else slice(None) for i in range(x.ndim))
  shift = lax.stop_gradient(x[first])
  d = x - shift
  mean_d = jnp.mean(d, reduction_axes)
  var = jnp.maximum(0.0, jnp.mean(d * d, reduction_axes) - mean_d * mean_d)
  return jnp.squeeze(shift, reduction_axes) + mean_d, var


def ghost_statistics(
  ghosts: jax.Array,
  reduction_axes: tuple[int, ...],
  *,
  plain: bool,
  ghost_variance: str = "shifted",
  dtype: Any = None,
  use_fast_variance: bool = True,
  mask: jax.Array | None = None,
  force_float32_reductions: bool = True,
  axis_name: str | None = None,
  axis_index_groups: Any = None,
) -> tuple[jax.Array, jax.Array]:
  """Mean and biased variance of each ghost batch of ``ghosts`` (K, ghost, ...).

  ``plain`` (no ghost size): flax's own statistics, with ``use_fast_variance``
  and the cross-device mean over ``axis_name``, so that the layer is
  ``BatchNorm`` to the bit. Ghost batches never cross devices; their variance
  follows ``ghost_variance``: ``"shifted"`` (one pass, accurate for any mean),
  ``"two_pass"`` (``E[(x - E[x])^2]``, two reads), ``"one_pass"``
  (``E[x^2] - E[x]^2``, flax's fast variance; inaccurate when the mean is large
  against the spread). With a mask ``"shifted"`` computes the two-pass variance,
  since the shift must be an unmasked value.

  Returns:
    ``(mean, var)``, each of shape (K, *feature dims), float32 unless
    ``dtype`` or the input is wider (as flax).
  """
  if not plain and ghost_variance == "shifted" and mask is None:
    stats_dtype = jnp.result_type(ghosts) if dtype is None else dtype
    if force_float32_reductions:
      stats_dtype = jnp.promote_types(stats_dtype, jnp.float32)
    return _shifted_statistics(ghosts, reduction_axes, stats_dtype)
  # Plain batch norm: flax's statistics across devices; ghost batches: their own.
  return compute_stats(
    ghosts,
    reduction_axes,
    dtype=dtype,
    axis_name=axis_name if plain else None,
    axis_index_groups=axis_index_groups if plain else None,
    use_fast_variance=use_fast_variance if plain else ghost_variance == "one_pass",
    mask=mask,
    force_float32_reductions=force_float32_reductions,
  )


def normalize(x, mean, var, scale, bias, reduction_axes, feature_axes, dtype, epsilon):
  """``(x - mean) * (scale * rsqrt(var + eps)) + bias``, flax's BatchNorm normalization.

  The same operations in the same order as flax's linen and NNX ``_normalize``
  (so plain batch norm stays identical to theirs); ``scale`` and ``bias`` are
  arrays of the feature shape or None.
  """
  stats_shape = [1 if i in reduction_axes else n for i, n in enumerate(x.shape)]
  feature_shape = [n if i in feature_axes else 1 for i, n in enumerate(x.shape)]
  y = x - mean.reshape(stats_shape)
  mul = lax.rsqrt(var.reshape(stats_shape) + epsilon)
  args = [x]
  if scale is not None:
    scale = scale.reshape(feature_shape)
    mul *= scale
    args.append(scale)
  y *= mul
  if bias is not None:
    bias = bias.reshape(feature_shape)
    y += bias
    args.append(bias)
  return jnp.asarray(y, dtypes.canonicalize_dtype(*args, dtype=dtype))


def normalize_ghosts(ghosts, mean, var, scale, bias, feature_axes, dtype, epsilon):
  """Normalizes each ghost batch of ``ghosts`` (K, ghost, ...) in one affine pass.

  The statistics and the learned scale and bias fold first into a small
  per-ghost, per-feature map, ``mul = scale * rsqrt(var + eps)`` and
  ``shift = bias - mean * mul``, and then ``y = x * mul + shift`` touches the
  activations once. :func:`normalize` computes ``(x - mean) * mul + bias``
  instead; differentiated, that keeps ``x - mean`` and the scaled product as
  full-size residuals for the backward pass, which costs two extra passes over
  the activations per layer (measured by experiments/benchmarks). The two agree
  up to float rounding.
  """
  # Statistics come as (ghosts, *features); broadcast them over the rest.
  stats_shape = [ghosts.shape[0]] + [
    ghosts.shape[i] if i in feature_axes else 1 for i in range(1, ghosts.ndim)
  ]
  params_shape = [1, *stats_shape[1:]]
  mul = lax.rsqrt(var.reshape(stats_shape) + epsilon)
  args = [ghosts]
  if scale is not None:
    scale = scale.reshape(params_shape)
    mul = mul * scale
    args.append(scale)
  shift = -mean.reshape(stats_shape) * mul
  if bias is not None:
    bias = bias.reshape(params_shape)
    shift = shift + bias
    args.append(bias)
  y = ghosts * mul + shift
  return jnp.asarray(y, dtypes.canonicalize_dtype(*args, dtype=dtype))


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


def ghost_view(x: jax.Array, num_ghosts: int, feature_axes: tuple[int, ...], mask=None):
  """``x`` as (ghosts, ghost_batch_size, ...): a reshape, the ghost batches contiguous.

  Returns:
    ``(ghosts, mask, reduction_axes, feature_axes)``, the mask (if any)
    broadcast to the same view and the axes of the view: statistics reduce over
    every axis but the ghost index and the features.
  """
  ghosts = x.reshape((num_ghosts, x.shape[0] // num_ghosts, *x.shape[1:]))
  ghost_feature_axes = tuple(ax + 1 for ax in feature_axes)
  reduction_axes = tuple(i for i in range(1, ghosts.ndim) if i not in ghost_feature_axes)
  if mask is not None:
    mask = jnp.broadcast_to(mask, x.shape).reshape(ghosts.shape)
  return ghosts, mask, reduction_axes, ghost_feature_axes


def feature_axes_of(x: jax.Array, axis: int | Iterable[int]) -> tuple[int, ...]:
  """The feature axes of ``x``; an error if they include the batch axis 0."""
  feature_axes = canonical_axes(x.ndim, axis)
  if 0 in feature_axes:
    raise ValueError(
      f"GhostBatchNorm: axis={axis} includes the batch axis 0 of an input of shape "
      f"{x.shape}; ghost batches are split along axis 0"
    )
  return feature_axes


class GhostOptions(NamedTuple):
  """The settings the shared training path reads from a linen or NNX GhostBatchNorm."""

  ghost_batch_size: int | None  # None: plain batch norm
  stats_update: str  # "sequential" or "mean"
  ghost_variance: str  # "shifted", "two_pass" or "one_pass"
  momentum: float  # decay of the running statistics (flax convention)
  epsilon: float
  dtype: Any  # computation dtype, or None
  use_fast_variance: bool  # plain batch norm only, as flax
  axis_name: str | None  # data-parallel axis, or None
  axis_index_groups: Any
  force_float32_reductions: bool = True  # linen only; NNX's BatchNorm has no such field
  running_variance: str = "biased"  # "biased" (flax) or "unbiased" (PyTorch), see below

  @classmethod
  def of(cls, norm: Any) -> GhostOptions:
    """The options of a GhostBatchNorm (linen or NNX): its attributes of these names."""
    return cls(**{name: getattr(norm, name) for name in cls._fields if hasattr(norm, name)})


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

  def _params(self, feature_shape):
    """scale and bias (or None), created as flax's ``_normalize`` creates them."""
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
    return params

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
    scale, bias = self._params(feature_shape)

    if use_running_average:
      reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
      mean, var = ra_mean.value, ra_var.value
      if not self.force_float32_reductions:
        mean, var = jnp.asarray(mean, self.param_dtype), jnp.asarray(var, self.param_dtype)
      return normalize(
        x, mean, var, scale, bias, reduction_axes, feature_axes, self.dtype, self.epsilon
      )

    initializing = self.is_initializing()
    options = GhostOptions.of(self)
    if initializing:
      # Only shapes matter: no cross-device statistics and no running update.
      options = options._replace(axis_name=None)
    y, mean, var = ghost_batch_norm_train(
      x,
      scale,
      bias,
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
