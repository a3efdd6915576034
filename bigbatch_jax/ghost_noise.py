"""Ghost Noise Injection (Kosson, Fan & Jaggi 2024): the math and the linen module.

Batch norm over the whole batch, then the noise that ghost batches of
``ghost_batch_size`` examples would have added, drawn from the same batch:
the normalization of Hoffer et al.'s Ghost BN without its train/test
discrepancy. The ghost statistics come from
:func:`bigbatch_jax.ghost_batches.ghost_statistics` and the whole-batch
path from :func:`~bigbatch_jax.ghost_batch_norm.ghost_batch_norm_train`; the
NNX front end (:mod:`bigbatch_jax.nnx_ghost_noise`) calls the same functions.

The math (Kosson et al. section 3 and 4). Let ``x_hat = (x - mu) / sqrt(var +
eps)`` be batch norm's normalized input over the whole batch (mean 0, variance
``v = var / (var + eps)``). Ghost BN normalizes ``x_hat`` once more with the
mean ``m`` and variance ``s2`` of a small ghost batch of N examples, which is
the affine noise ``(x_hat - m) / sqrt(s2 / v)``; for Gaussian activations ``m``
is ``N(0, v / N)`` and ``N s2 / v`` is chi-squared with N - 1 degrees of
freedom (per value of a dense layer; a convolution's ghost batch holds N times
its spatial positions). Ghost Noise Injection applies that transform with
``(m, s2)`` measured on a ghost batch of N examples drawn *with replacement*
from the batch, so the noise has the ghost statistics' distribution without
tying an example to its own ghost batch, and evaluation (running statistics of
the whole batch) sees the normalization training saw.

Readings chosen where the paper and its code (epfml/ghost-noise,
``ghost_noise_injector_replacement.py``) leave room:

* Where: after the whole-batch normalization, before ``scale`` and ``bias``
  (the code's experiments place the injector between an affine-free batch
  norm and the gain and bias); the noise ``(m, s2)`` is a constant for the
  gradient, as the code computes it without gradient.
* The noise's variance ratio is ``(s2 + noise_epsilon) / (v + noise_epsilon)``
  with ``noise_epsilon = 1e-3`` on the normalized scale (the code's default).
* Distribution: ghost batches are drawn with replacement (the code's
  ``GhostNoiseInjectorR``, the paper's final method). ``ghost_draws`` says who
  shares a draw: ``"per_example"`` (the code: every example its own ghost
  batch; costs N times the activations' memory, a gather of (b, N, ...))
  or ``"per_ghost"`` (default: one draw per block of N consecutive examples,
  like Ghost BN's ghost batches; the same marginal distribution per example at
  the cost of one extra read of the activations).
* Ghost size: the noise's equivalent batch size N is the ghost size that Ghost
  BN would use (``ghost_batch_size``); None switches the noise off and the
  layer is batch norm.
* Data parallelism: the ghost batches are drawn from the global batch (the
  normalized activations of all devices, gathered over ``axis_name``) with a
  key every device holds, each device taking its examples' draws; so the noise
  does not depend on the device count (the code draws within each process's
  batch).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax.linen import dtypes
from flax.linen.module import compact
from jax import lax

from bigbatch_jax.ghost_batch_norm import GhostBatchNorm, ghost_batch_norm_train
from bigbatch_jax.ghost_batches import GhostOptions, ghost_axes, ghost_statistics, is_ghost_size
from bigbatch_jax.running_statistics import update_running_statistics

GHOST_DRAWS = ("per_ghost", "per_example")
RNG_COLLECTION = "ghost_noise"  # the flax rng collection (and NNX Rngs stream) of the noise
NOISE_EPSILON = 1e-3


def check_noise_options(ghost_batch_size: Any, ghost_draws: str, noise_epsilon: Any) -> None:
  """Raises ValueError naming the bad option and the valid ones."""
  if not is_ghost_size(ghost_batch_size):
    raise ValueError(
      f"GhostNoiseBatchNorm: ghost_batch_size={ghost_batch_size!r} must be an integer >= 2 "
      "(the noise's equivalent batch size; one example has no variance) or None for no noise"
    )
  if ghost_draws not in GHOST_DRAWS:
    raise ValueError(
      f"GhostNoiseBatchNorm: unknown ghost_draws={ghost_draws!r}; valid values are {GHOST_DRAWS}"
    )
  if not isinstance(noise_epsilon, (int, float)) or not noise_epsilon > 0:
    raise ValueError(
      f"GhostNoiseBatchNorm: noise_epsilon={noise_epsilon!r} must be a number > 0 (it keeps "
      "the variance ratio finite for a ghost batch of equal values)"
    )


def draws_per_device(local_batch: int, ghost_batch_size: int, ghost_draws: str) -> int:
  """How many ghost batches a device draws: one per example, or one per N examples."""
  if ghost_draws == "per_example":
    return local_batch
  if local_batch % ghost_batch_size:
    raise ValueError(
      f"GhostNoiseBatchNorm: ghost_draws='per_ghost' shares one draw among "
      f"ghost_batch_size={ghost_batch_size} consecutive examples, which does not divide the "
      f"local batch of {local_batch} (the per-device batch under data parallelism); use a "
      f"ghost size that divides {local_batch}, or ghost_draws='per_example'"
    )
  return local_batch // ghost_batch_size


def ghost_noise(
  key: jax.Array,
  x_hat: jax.Array,
  full_var: jax.Array,
  feature_axes: tuple[int, ...],
  *,
  ghost_batch_size: int,
  ghost_draws: str = "per_ghost",
  ghost_variance: str = "shifted",
  noise_epsilon: float = NOISE_EPSILON,
  axis_name: str | None = None,
) -> tuple[jax.Array, jax.Array]:
  """The ghost noise of each example of ``x_hat``: a shift and a scale per feature.

  Ghost batches of ``ghost_batch_size`` examples are drawn with replacement
  from the whole batch (over ``axis_name``, all devices' examples in device
  order), with indices from ``key`` (the same key on every device); their
  means ``m`` and biased variances ``s2`` are
  :func:`~bigbatch_jax.ghost_batches.ghost_statistics`.

  Args:
    key: a typed key, the same on every device.
    x_hat: this device's batch normalized by the whole batch's statistics,
      batch axis 0; no gradient flows through the noise.
    full_var: the variance ``v`` of ``x_hat`` over the whole batch, of the
      feature shape (``var / (var + eps)`` for batch norm's ``var``, ``eps``).
    feature_axes: the feature axes of ``x_hat`` (not 0).
    ghost_batch_size: N, the noise's equivalent batch size.
    ghost_draws: ``"per_ghost"`` or ``"per_example"`` (module docstring).
    ghost_variance: how each draw's variance is computed, as for Ghost BN.
    noise_epsilon: added to both variances of the ratio.
    axis_name: the data-parallel axis, or None on one device.

  Returns:
    ``(shift, scale)``, each (local batch, *feature shape): ``m`` and
    ``sqrt((s2 + noise_epsilon) / (v + noise_epsilon))`` of each example's
    draw; the noisy activation is ``(x_hat - shift) / scale``.
  """
  x_hat = lax.stop_gradient(x_hat)
  local = x_hat.shape[0]
  draws = draws_per_device(local, ghost_batch_size, ghost_draws)
  if axis_name is None:
    pool, position, num_devices = x_hat, 0, 1
  else:
    pool = lax.all_gather(x_hat, axis_name, tiled=True)
    position, num_devices = lax.axis_index(axis_name), pool.shape[0] // local
  indices = jax.random.randint(key, (draws * num_devices, ghost_batch_size), 0, pool.shape[0])
  indices = lax.dynamic_slice_in_dim(indices, position * draws, draws)
  ghosts = jnp.take(pool, indices, axis=0)  # (draws, N, ...)
  reduction_axes, _ = ghost_axes(ghosts.ndim, feature_axes)
  mean, var = ghost_statistics(ghosts, reduction_axes, plain=False, ghost_variance=ghost_variance)
  scale = jnp.sqrt((var + noise_epsilon) / (full_var.astype(var.dtype) + noise_epsilon))
  repeats = local // draws
  return jnp.repeat(mean, repeats, axis=0), jnp.repeat(scale, repeats, axis=0)


def ghost_noise_train(
  x: jax.Array,
  scale: jax.Array | None,
  bias: jax.Array | None,
  feature_axes: tuple[int, ...],
  options: GhostOptions,
  *,
  key: jax.Array | None,
  ghost_draws: str = "per_ghost",
  noise_epsilon: float = NOISE_EPSILON,
  mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode batch norm of ``x`` with ghost noise, for the linen and NNX front ends.

  The whole batch's statistics (averaged over ``options.axis_name``) normalize
  ``x``; with ``options.ghost_batch_size`` set, each example's normalized value
  becomes ``(x_hat - shift) / noise_scale`` (:func:`ghost_noise`) before
  ``scale`` and ``bias``. Without a ghost size (or ``key``) it is
  :func:`~bigbatch_jax.ghost_batch_norm.ghost_batch_norm_train` with no ghost
  size: flax's BatchNorm to the bit.

  Returns:
    ``(y, mean, var)``: the output and the whole batch's statistics, shape
    (1, features), as ``update_running_statistics`` takes them.
  """
  plain = options._replace(ghost_batch_size=None)
  if options.ghost_batch_size is None or key is None:
    return ghost_batch_norm_train(x, scale, bias, feature_axes, plain, num_ghosts=1, mask=mask)
  if mask is not None:
    raise ValueError(
      "GhostNoiseBatchNorm: a mask is not supported with ghost noise (the ghost batches are "
      "drawn from every example); pass mask=None, or ghost_batch_size=None for batch norm"
    )
  reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
  mean, var = ghost_statistics(
    x,
    reduction_axes,
    plain=True,
    dtype=options.dtype,
    use_fast_variance=options.use_fast_variance,
    force_float32_reductions=options.force_float32_reductions,
    axis_name=options.axis_name,
  )
  stats_shape = [1 if i in reduction_axes else n for i, n in enumerate(x.shape)]
  inv_std = lax.rsqrt(var + options.epsilon)
  x_hat = (x - mean.reshape(stats_shape)) * inv_std.reshape(stats_shape)
  shift, noise_scale = ghost_noise(
    key,
    x_hat,
    var * inv_std * inv_std,
    feature_axes,
    ghost_batch_size=options.ghost_batch_size,
    ghost_draws=ghost_draws,
    ghost_variance=options.ghost_variance,
    noise_epsilon=noise_epsilon,
    axis_name=options.axis_name,
  )
  example_shape = [n if i == 0 or i in feature_axes else 1 for i, n in enumerate(x.shape)]
  feature_shape = [n if i in feature_axes else 1 for i, n in enumerate(x.shape)]
  mul = 1.0 / noise_scale.reshape(example_shape)
  args = [x]
  if scale is not None:
    mul = mul * scale.reshape(feature_shape)
    args.append(scale)
  y = (x_hat - shift.reshape(example_shape)) * mul
  if bias is not None:
    y = y + bias.reshape(feature_shape)
    args.append(bias)
  y = jnp.asarray(y, dtypes.canonicalize_dtype(*args, dtype=options.dtype))
  return y, mean.reshape((1, -1)), var.reshape((1, -1))


class GhostNoiseBatchNorm(GhostBatchNorm):
  """Batch norm with Ghost Noise Injection; a drop-in for ``nn.BatchNorm``.

  Kosson, Fan & Jaggi (sections 3-4): normalize with the whole batch's
  statistics, then inject the noise Ghost BN's small batches would have added,
  measured on ghost batches of ``ghost_batch_size`` examples drawn with
  replacement from the batch (see the module docstring for the math and the
  readings chosen). Running statistics are the whole batch's, one moving-average
  step per call, as ``nn.BatchNorm``; inference (``use_running_average=True``)
  is ``nn.BatchNorm``'s, and so is training with ``ghost_batch_size=None``.

  The noise's key comes from the ``"ghost_noise"`` rng collection
  (``rngs={"ghost_noise": key}`` in ``apply``): each layer folds in its own
  path, so layers draw independently. Under data parallelism pass the same key
  to every device; the ghost batches are drawn from the global batch, so the
  outputs do not depend on the device count (``axis_index_groups`` is not
  supported with the noise).

  Variables are those of ``nn.BatchNorm`` (and of :class:`GhostBatchNorm`), so
  the parameters of a GhostBatchNorm or BatchNorm model load unchanged.

  Attributes:
    ghost_batch_size: the noise's equivalent batch size N (>= 2), or None for
      batch norm without noise.
    ghost_draws: ``"per_ghost"`` (one draw per N consecutive examples) or
      ``"per_example"`` (one draw per example, as the authors' code).
    noise_epsilon: added to both variances of the noise's scale ratio.
    ghost_variance: how each draw's variance is computed (as Ghost BN's).
    stats_update: accepted for GhostBatchNorm's signature; one whole-batch
      statistic per call makes both rules the same.

  The other attributes (``use_running_average``, ``axis``, ``momentum``,
  ``epsilon``, ``dtype``, ``param_dtype``, ``use_bias``, ``use_scale``,
  ``bias_init``, ``scale_init``, ``axis_name``, ``axis_index_groups``,
  ``use_fast_variance``, ``force_float32_reductions``) are
  ``flax.linen.BatchNorm``'s.

  Example:
    >>> import jax
    >>> norm = GhostNoiseBatchNorm(ghost_batch_size=4, momentum=0.9)
    >>> x = jax.random.normal(jax.random.key(0), (16, 3))
    >>> variables = norm.init(jax.random.key(1), x, use_running_average=False)
    >>> y, updates = norm.apply(
    ...   variables, x, use_running_average=False, mutable=["batch_stats"],
    ...   rngs={"ghost_noise": jax.random.key(2)})
    >>> y.shape
    (16, 3)

  References:
    Kosson, Fan, Jaggi 2024, "Ghost Noise for Regularizing Deep Neural
    Networks" (AAAI; arXiv 2305.17205), sections 3 and 4; Hoffer, Hubara,
    Soudry 2017, section 4, Algorithm 1 (the ghost batches).
  """

  ghost_draws: str = "per_ghost"
  noise_epsilon: float = NOISE_EPSILON

  @compact
  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    """Normalizes ``x`` by the whole batch with ghost noise (training) or running statistics.

    Args:
      x: the input; axis 0 is the batch.
      use_running_average: use the running statistics instead of the batch's.
      mask: optional, broadcastable to ``x`` (batch norm only: an error with
        the noise on).

    Returns:
      The normalized input, of the shape of ``x``.
    """
    check_noise_options(self.ghost_batch_size, self.ghost_draws, self.noise_epsilon)
    if self.ghost_batch_size is not None and self.axis_index_groups is not None:
      raise ValueError(
        "GhostNoiseBatchNorm: axis_index_groups is not supported with ghost noise (the ghost "
        "batches are drawn from the whole axis); pass axis_index_groups=None"
      )
    call = self._call_variables(x, use_running_average)
    if call.use_running_average:
      return self._normalize_by_running_average(x, call)
    feature_axes, ra_mean, ra_var = call.feature_axes, call.ra_mean, call.ra_var
    initializing = self.is_initializing()
    options = GhostOptions.of(self)
    if initializing:
      # Only shapes matter: no noise, no cross-device statistics, no running update.
      options = options._replace(axis_name=None, ghost_batch_size=None)
    noisy = options.ghost_batch_size is not None
    y, mean, var = ghost_noise_train(
      x,
      call.scale,
      call.bias,
      feature_axes,
      options,
      key=self.make_rng(RNG_COLLECTION) if noisy else None,
      ghost_draws=self.ghost_draws,
      noise_epsilon=self.noise_epsilon,
      mask=mask,
    )
    if not initializing:
      ra_mean.value, ra_var.value = update_running_statistics(
        ra_mean.value, ra_var.value, mean, var, options._replace(ghost_batch_size=None)
      )
    return y
