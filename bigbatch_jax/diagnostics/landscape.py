"""Loss statistics along random directions (Hoffer et al. 2017, appendix B).

A "random walk on a random potential" with loss auto-covariance growing as
||w1 - w2||**alpha (Hoffer eq. 2) moves ultra-slowly, ||w_t - w0|| ~
(log t)**(2/alpha); the logarithmic growth of Figure 2 means alpha = 2. The
appendix checks this on the loss itself: with w = w0 + z v for random unit
directions v and z uniform in [0, c],

    std(d) = sqrt(E (L(w) - L(w0))**2) ~ d**(alpha/2),  d = ||w - w0||  (eq. 8),

so the slope of log std against log d is alpha / 2 (linear std: alpha = 2).
The paper does this at initialization, with c the largest distance training
reaches. Batch normalization: evaluate ``loss_fn`` in evaluation mode.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree


def random_direction_losses(
  loss_fn: Callable[..., jax.Array],
  params,
  key: jax.Array,
  num_samples: int = 1000,
  max_distance: float = 10.0,
) -> dict[str, jax.Array]:
  """L(w0 + z v) for random unit directions v and z ~ U[0, c] (Hoffer appendix B).

  Each sample draws its own direction (Gaussian over the flattened
  parameters, normalized to norm one) and its own z. Jittable with
  ``loss_fn`` and ``num_samples`` static.

  Args:
    loss_fn: scalar function of a parameter pytree.
    params: w0.
    key: typed key.
    num_samples: how many (v, z) pairs, >= 1 (the paper uses 1000).
    max_distance: c > 0 (the paper: the largest ||w_t - w0|| of training).

  Returns:
    ``distances`` (num_samples,) = z, ``losses`` (num_samples,) and
    ``loss0`` = L(w0).
  """
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  if not max_distance > 0:
    raise ValueError(f"max_distance must be > 0, got {max_distance}")
  flat, unravel = ravel_pytree(params)
  direction_key, distance_key = jax.random.split(key)
  distances = jax.random.uniform(distance_key, (num_samples,), flat.dtype, 0.0, max_distance)

  def one(args):
    i, z = args
    v = jax.random.normal(jax.random.fold_in(direction_key, i), flat.shape, flat.dtype)
    v = v / jnp.linalg.norm(v)
    return loss_fn(unravel(flat + z * v))

  losses = lax.map(one, (jnp.arange(num_samples), distances))
  return {"distances": distances, "losses": losses, "loss0": loss_fn(params)}


def binned_loss_std(
  distances: jax.Array, loss_differences: jax.Array, num_bins: int = 20
) -> dict[str, jax.Array]:
  """sqrt(mean((L(w) - L(w0))**2)) in equal-width bins of distance (Hoffer eq. 8, Fig. 4).

  The std of eq. 8 is the root mean square of the difference, not centred.
  The bins split [0, max distance]; a bin with no sample gets count 0 and
  std NaN. Jittable with ``num_bins`` static.

  Args:
    distances: (n,) distances ||w - w0||.
    loss_differences: (n,) L(w) - L(w0).
    num_bins: number of bins, >= 2.

  Returns:
    ``centers``, ``std`` and ``count``, each (num_bins,).
  """
  if num_bins < 2:
    raise ValueError(f"num_bins must be >= 2, got {num_bins}")
  distances = jnp.asarray(distances)
  loss_differences = jnp.asarray(loss_differences)
  if distances.shape != loss_differences.shape or distances.ndim != 1:
    raise ValueError(
      f"distances and loss_differences must be 1-D of equal length, got {distances.shape} "
      f"and {loss_differences.shape}"
    )
  width = jnp.max(distances) / num_bins
  index = jnp.clip(jnp.floor(distances / width).astype(jnp.int32), 0, num_bins - 1)
  count = jax.ops.segment_sum(jnp.ones_like(distances), index, num_bins)
  square = jax.ops.segment_sum(loss_differences**2, index, num_bins)
  std = jnp.where(count > 0, jnp.sqrt(square / jnp.maximum(count, 1)), jnp.nan)
  centers = (jnp.arange(num_bins) + 0.5) * width
  return {"centers": centers, "std": std, "count": count}


def fit_alpha(
  centers: jax.Array, std: jax.Array, min_count: jax.Array | None = None
) -> dict[str, jax.Array]:
  """alpha from log std = (alpha / 2) log d + b, least squares (Hoffer eq. 2, 8).

  Bins with a NaN or non-positive std (or, with ``min_count``, a zero count)
  are left out of the fit. Jittable.

  Args:
    centers: (num_bins,) bin distances, > 0.
    std: (num_bins,) binned std of L(w) - L(w0).
    min_count: optional (num_bins,) counts; bins with count 0 are left out.

  Returns:
    ``alpha`` (twice the slope), ``slope``, ``intercept`` and ``r2`` of the
    log-log fit.
  """
  centers = jnp.asarray(centers)
  std = jnp.asarray(std)
  valid = jnp.isfinite(std) & (std > 0) & (centers > 0)
  if min_count is not None:
    valid &= jnp.asarray(min_count) > 0
  w = valid.astype(centers.dtype)
  x = jnp.log(jnp.where(valid, centers, 1.0))
  y = jnp.log(jnp.where(valid, std, 1.0))
  n = jnp.sum(w)
  mx, my = jnp.sum(w * x) / n, jnp.sum(w * y) / n
  sxx = jnp.sum(w * (x - mx) ** 2)
  slope = jnp.sum(w * (x - mx) * (y - my)) / sxx
  intercept = my - slope * mx
  residual = jnp.sum(w * (y - slope * x - intercept) ** 2)
  total = jnp.sum(w * (y - my) ** 2)
  r2 = 1.0 - residual / total
  return {"alpha": 2.0 * slope, "slope": slope, "intercept": intercept, "r2": r2}


def landscape_statistics(
  loss_fn: Callable[..., jax.Array],
  params,
  key: jax.Array,
  num_samples: int = 1000,
  max_distance: float = 10.0,
  num_bins: int = 20,
) -> dict[str, jax.Array]:
  """Hoffer appendix B in one call: random-direction losses, binned std, fitted alpha.

  The paper finds std linear in distance, alpha = 2, matching the
  logarithmic weight distance of Figure 2. Jittable with ``loss_fn``,
  ``num_samples`` and ``num_bins`` static.

  Args:
    loss_fn: scalar function of a parameter pytree (batch norm in evaluation
      mode).
    params: w0 (the paper: the initialization).
    key: typed key.
    num_samples: random (v, z) pairs, >= 1.
    max_distance: c > 0, the largest z.
    num_bins: distance bins, >= 2.

  Returns:
    The outputs of :func:`random_direction_losses`, :func:`binned_loss_std`
    (``centers``, ``std``, ``count``) and :func:`fit_alpha` (``alpha``,
    ``slope``, ``intercept``, ``r2``; fitted on all bins but the first).
  """
  samples = random_direction_losses(loss_fn, params, key, num_samples, max_distance)
  bins = binned_loss_std(samples["distances"], samples["losses"] - samples["loss0"], num_bins)
  # The first bin, [0, width], spans every scale of d near 0: its centre is
  # no fair abscissa for a power law (for std ~ d**p its RMS is not
  # (width/2)**p), so the fit starts at the second bin.
  fit = fit_alpha(bins["centers"][1:], bins["std"][1:], bins["count"][1:])
  return {**samples, **bins, **fit}
