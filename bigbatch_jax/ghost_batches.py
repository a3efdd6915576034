"""Ghost batches (Hoffer et al. 2017, Algorithm 1): the split, the statistics, the normalization.

A local batch splits along axis 0 into contiguous ghost batches; each has its
own mean and biased variance and is normalized by them. These functions are
the math both front ends run: the linen module
(:mod:`bigbatch_jax.ghost_batch_norm`) and the Flax NNX one
(:mod:`bigbatch_jax.nnx`), through
:func:`bigbatch_jax.ghost_batch_norm.ghost_batch_norm_train`; Ghost Noise
Injection (:mod:`bigbatch_jax.ghost_noise`) computes its draws' statistics
with :func:`ghost_statistics`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax.linen import dtypes
from jax import lax

from bigbatch_jax._compat import compute_stats

STATS_UPDATES = ("sequential", "mean")
GHOST_VARIANCES = ("shifted", "two_pass", "one_pass")


def canonical_axes(ndim: int, axes: int | Iterable[int]) -> tuple[int, ...]:
  """Non-negative, sorted, deduplicated axes of an array of rank ``ndim``."""
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  return tuple(sorted({ax + ndim if ax < 0 else ax for ax in axes}))


def is_ghost_size(ghost_batch_size: Any) -> bool:
  """Whether ``ghost_batch_size`` is None or an integer >= 2 (not a bool)."""
  if ghost_batch_size is None:
    return True
  return (
    isinstance(ghost_batch_size, int)
    and not isinstance(ghost_batch_size, bool)
    and ghost_batch_size >= 2
  )


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
  if not is_ghost_size(ghost_batch_size):
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


def ghost_view(x: jax.Array, num_ghosts: int, feature_axes: tuple[int, ...], mask=None):
  """``x`` as (ghosts, ghost_batch_size, ...): a reshape, the ghost batches contiguous.

  Returns:
    ``(ghosts, mask, reduction_axes, feature_axes)``, the mask (if any)
    broadcast to the same view and the axes of the view: statistics reduce over
    every axis but the ghost index and the features.
  """
  ghosts = x.reshape((num_ghosts, x.shape[0] // num_ghosts, *x.shape[1:]))
  reduction_axes, ghost_feature_axes = ghost_axes(ghosts.ndim, feature_axes)
  if mask is not None:
    mask = jnp.broadcast_to(mask, x.shape).reshape(ghosts.shape)
  return ghosts, mask, reduction_axes, ghost_feature_axes


def ghost_axes(ndim: int, feature_axes: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
  """``(reduction_axes, feature_axes)`` of ghost batches (K, ghost, ...) of rank ``ndim``.

  ``feature_axes`` are the input's (batch axis 0); in the view they move one
  axis on, and the statistics reduce over every axis but the ghost index and
  the features.
  """
  ghost_feature_axes = tuple(ax + 1 for ax in feature_axes)
  reduction_axes = tuple(i for i in range(1, ndim) if i not in ghost_feature_axes)
  return reduction_axes, ghost_feature_axes


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
  running_variance: str = "biased"  # "biased" (flax) or "unbiased" (PyTorch): running_variance.py

  @classmethod
  def of(cls, norm: Any) -> GhostOptions:
    """The options of a GhostBatchNorm (linen or NNX): its attributes of these names."""
    return cls(**{name: getattr(norm, name) for name in cls._fields if hasattr(norm, name)})
