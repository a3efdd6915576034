"""Gradient noise scale (McCandlish et al. 2018) and the covariance of a regime's updates.

With per-example gradients of mean G and covariance Sigma, a batch of B
examples drawn with replacement has E|G_B|**2 = |G|**2 + tr(Sigma) / B.
Measuring E|G_B|**2 at two batch sizes gives unbiased estimates of both terms
(McCandlish et al., appendix A.1) and the "simple" noise scale

    B_simple = tr(Sigma) / |G|**2,

the batch size beyond which larger batches stop paying for themselves.
Hoffer et al. (section 4, eq. 6) instead match the covariance of the update,
cov(dw) = eta**2 / M * (1/N sum g_n g_n^T): :func:`update_covariance`
measures it for any update rule, so that LB+LR (eta * sqrt(r)) or LB+mult
can be checked against SB on one's own model.

Batch normalization: per-example gradients must not depend on the rest of
the batch for the estimator to hold, so gradients are taken in evaluation
mode (running statistics frozen) by the run helpers.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.flatten_util import ravel_pytree


def _check_batch_sizes(b_small: int, b_big: int) -> None:
  if not 0 < b_small < b_big:
    raise ValueError(f"need 0 < b_small < b_big, got b_small={b_small}, b_big={b_big}")


def gradient_noise_scale(
  grad_sq_small: jax.Array, grad_sq_big: jax.Array, b_small: int, b_big: int
) -> dict[str, jax.Array]:
  """B_simple from mean squared gradient norms at two batch sizes (McCandlish et al., A.1).

      |G|**2    = (b_big |G_big|**2 - b_small |G_small|**2) / (b_big - b_small)
      tr(Sigma) = (|G_small|**2 - |G_big|**2) / (1 / b_small - 1 / b_big)

  Both are unbiased when the inputs are unbiased estimates of E|G_B|**2. The
  ratio of two noisy estimates is not unbiased; McCandlish et al. average the
  numerator and denominator over many batches before dividing, as
  :func:`measure_noise_scale` does. Jittable.

  Args:
    grad_sq_small: mean |G_B|**2 over batches of size b_small.
    grad_sq_big: mean |G_B|**2 over batches of size b_big.
    b_small: the small batch size, > 0.
    b_big: the big batch size, > b_small.

  Returns:
    ``grad_sq`` (|G|**2), ``trace_sigma`` (tr Sigma) and ``b_simple``.
  """
  _check_batch_sizes(b_small, b_big)
  grad_sq = (b_big * grad_sq_big - b_small * grad_sq_small) / (b_big - b_small)
  trace_sigma = (grad_sq_small - grad_sq_big) / (1.0 / b_small - 1.0 / b_big)
  return {"grad_sq": grad_sq, "trace_sigma": trace_sigma, "b_simple": trace_sigma / grad_sq}


def mean_squared_gradient_norm(grad_fn: Callable, params, batches) -> jax.Array:
  """Mean over stacked batches of |grad_fn(params, batch)|**2 (jittable)."""
  return jnp.mean(lax.map(lambda b: optax.tree.norm(grad_fn(params, b)) ** 2, batches))


def measure_noise_scale(
  grad_fn: Callable, params, small_batches, big_batches
) -> dict[str, jax.Array]:
  """B_simple of ``grad_fn`` at ``params`` from two sets of batches (McCandlish et al. 2018).

  Args:
    grad_fn: (params, batch) -> the gradient of the batch-mean loss (a pytree).
    params: where to measure.
    small_batches: a pytree of stacked batches, leaves (n_small, b_small, ...)
      (e.g. ``{"x": ..., "y": ...}``), sampled from the training set.
    big_batches: the same with leaves (n_big, b_big, ...), b_big > b_small.

  Returns:
    The dict of :func:`gradient_noise_scale` plus ``grad_sq_small``,
    ``grad_sq_big``, ``b_small`` and ``b_big``.
  """
  b_small = jax.tree.leaves(small_batches)[0].shape[1]
  b_big = jax.tree.leaves(big_batches)[0].shape[1]
  small = mean_squared_gradient_norm(grad_fn, params, small_batches)
  big = mean_squared_gradient_norm(grad_fn, params, big_batches)
  out = gradient_noise_scale(small, big, b_small, b_big)
  return {**out, "grad_sq_small": small, "grad_sq_big": big, "b_small": b_small, "b_big": b_big}


def update_covariance(
  update_fn: Callable, params, batches, key: jax.Array, num_projections: int = 0
) -> dict[str, jax.Array]:
  """The empirical covariance of one update dw over sampled batches (Hoffer eq. 6).

  ``update_fn(params, batch, key)`` returns the parameter increment of one
  step of a regime from ``params`` (e.g. ``-lr * grad`` for SGD, or with the
  multiplicative noise weights of LB+mult). Over the n given batches, with
  the unbiased (n - 1) normalization, this returns the mean update and
  tr cov(dw); with ``num_projections`` = k > 0 also the k x k covariance of
  the projections of dw on k random orthonormal directions, which compares
  the structure and not only the scale of two regimes' noise. Jittable with
  ``update_fn`` and ``num_projections`` static.

  Args:
    update_fn: (params, batch, key) -> update pytree shaped like ``params``.
    params: the point the updates start from.
    batches: a pytree of stacked batches, leaves (n, batch_size, ...), n >= 2.
    key: typed key; folded with the batch index for each update.
    num_projections: k >= 0 random directions to project on.

  Returns:
    ``trace`` (tr cov), ``mean_norm`` (|E dw|), ``mean_sq_norm`` (E|dw|**2)
    and, with k > 0, ``projected_cov`` (k, k).
  """
  num = jax.tree.leaves(batches)[0].shape[0]
  if num < 2:
    raise ValueError(f"need >= 2 batches for a covariance, got {num}")
  if num_projections < 0:
    raise ValueError(f"num_projections must be >= 0, got {num_projections}")
  update_key, projection_key = jax.random.split(key)

  def one(args):
    i, batch = args
    return ravel_pytree(update_fn(params, batch, jax.random.fold_in(update_key, i)))[0]

  # Streamed sums (no (n, dim) matrix): sum dw, sum |dw|^2, sum of projections.
  dim = ravel_pytree(params)[0].size
  if num_projections:
    gaussian = jax.random.normal(projection_key, (dim, num_projections))
    directions, _ = jnp.linalg.qr(gaussian)
  else:
    directions = jnp.zeros((dim, 0))

  def accumulate(carry, args):
    total, total_sq, projections = carry
    dw = one(args)
    p = dw @ directions
    return (total + dw, total_sq + jnp.vdot(dw, dw), projections), p

  zero = jnp.zeros((dim,), jnp.float32)
  (total, total_sq, _), projected = lax.scan(
    accumulate, (zero, jnp.zeros(()), None), (jnp.arange(num), batches)
  )
  mean = total / num
  trace = (total_sq - num * jnp.vdot(mean, mean)) / (num - 1)
  out = {"trace": trace, "mean_norm": jnp.linalg.norm(mean), "mean_sq_norm": total_sq / num}
  if num_projections:
    out["projected_cov"] = jnp.cov(projected, rowvar=False).reshape(
      num_projections, num_projections
    )
  return out
