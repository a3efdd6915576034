"""What the Flax NNX batch norms' calls share: the mode, the inputs, inference, the running update.

``bigbatch_jax.nnx.GhostBatchNorm`` and ``bigbatch_jax.nnx_ghost_noise.GhostNoiseBatchNorm``
are ``nnx.BatchNorm`` subclasses whose calls differ only in the training path
(ghost batches, or whole-batch statistics and ghost noise); the rest is here,
as ``nnx.BatchNorm`` does it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
from flax import nnx

from bigbatch_jax.ghost_batches import GhostOptions, feature_axes_of, normalize
from bigbatch_jax.running_statistics import update_running_statistics


class BatchNormInputs(NamedTuple):
  """A call's input and the layer's statistics and parameters, dtype-promoted."""

  x: jax.Array
  mean: jax.Array  # the running mean
  var: jax.Array  # the running variance
  scale: jax.Array | None
  bias: jax.Array | None
  feature_axes: tuple[int, ...]


def use_running_average_of(norm: nnx.BatchNorm, use_running_average: bool | None) -> bool:
  """The call's mode: its argument, else the layer's; an error if both are None."""
  if use_running_average is None:
    use_running_average = norm.use_running_average
  if use_running_average is None:
    raise ValueError(
      f"{type(norm).__name__}: use_running_average is None; pass it to the constructor or the "
      "call, or set the mode with model.train() / model.eval()"
    )
  return use_running_average


def batch_norm_inputs(norm: nnx.BatchNorm, x: jax.Array) -> BatchNormInputs:
  """``x``, the running statistics, scale and bias, with ``nnx.BatchNorm``'s dtype promotion."""
  feature_axes = feature_axes_of(x, norm.axis)
  scale = None if norm.scale is None else norm.scale[...]
  bias = None if norm.bias is None else norm.bias[...]
  mean, var = norm.mean[...], norm.var[...]
  # flax 0.12.0's BatchNorm had no dtype promotion (and no promote_dtype attribute).
  promote = getattr(norm, "promote_dtype", None)
  if promote is not None:
    x, mean, var, scale, bias = promote((x, mean, var, scale, bias), dtype=norm.dtype)
  return BatchNormInputs(x, mean, var, scale, bias, feature_axes)


def normalize_by_running_average(norm: nnx.BatchNorm, inputs: BatchNormInputs) -> jax.Array:
  """Inference: the input normalized by the running statistics, as ``nnx.BatchNorm``."""
  x, mean, var, scale, bias, feature_axes = inputs
  reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
  return normalize(
    x, mean, var, scale, bias, reduction_axes, feature_axes, norm.dtype, norm.epsilon
  )


def update_running_average(
  norm: nnx.BatchNorm,
  batch_mean: jax.Array,
  batch_var: jax.Array,
  options: GhostOptions,
  variance_factor: Any = None,
) -> None:
  """Sets the layer's running statistics after a training call's (ghost) statistics.

  :func:`~bigbatch_jax.running_statistics.update_running_statistics`; the new
  statistics carry no gradient (``nnx.BatchNorm``'s rule).
  """
  new_mean, new_var = update_running_statistics(
    norm.mean[...], norm.var[...], batch_mean, batch_var, options, variance_factor
  )
  norm.mean[...] = jax.lax.stop_gradient(new_mean)
  norm.var[...] = jax.lax.stop_gradient(new_var)
