"""Multiplicative per-sample gradient noise (Hoffer et al. 2017, section 4).

The noisy gradient estimate of Hoffer et al. is

    g_hat = (1/M) sum_{n in B} g_n z_n,    z_n ~ N(1, sigma**2) i.i.d.,

with g_n the gradient of the loss of sample n. Because the gradient is linear
in per-sample loss weights, g_hat is the gradient of the weighted loss
(1/M) sum_n z_n L_n: one backward pass, no per-example gradients.

Why sigma**2 = r - 1 matches the small batch (r = M_L / M_S). Write the
mini-batch as M indices drawn uniformly with replacement from N samples and let
S = (1/N) sum_n g_n g_n^T be the per-sample second moment and g the full-data
gradient. The z_n are independent of the draw, E z = 1 and E z**2 = 1 + sigma**2:

    E[g_hat] = g
    E[g_hat g_hat^T] = (1/M**2) [ M (1 + sigma**2) S + M (M - 1) g g^T ]
    cov(g_hat) = ((1 + sigma**2) S - g g^T) / M.

Near a stationary point (or when |g|**2 << tr S, which the paper observes) the
g g^T term is negligible and cov(g_hat) ~= (1 + sigma**2) S / M, Hoffer's eq. 6
with the factor 1 + sigma**2. Setting (1 + sigma**2) / M_L = 1 / M_S gives

    sigma**2 = M_L / M_S - 1 = r - 1,

so the large batch at the base learning rate has the update covariance of the
small batch while its mean step E[g_hat] = g is unchanged (Hoffer: "this method
keeps the covariance constant when we change the batch size, yet does not change
the mean steps").
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp


def matched_noise_variance(batch_size: int, base_batch_size: int) -> float:
  """The variance sigma**2 = batch_size / base_batch_size - 1 of matched noise.

  With this variance, multiplicative noise at ``batch_size`` gives the update
  covariance of plain SGD at ``base_batch_size`` (see the module docstring for
  the derivation).

  Args:
    batch_size: the large batch size M_L.
    base_batch_size: the small batch size M_S whose covariance is matched.

  Returns:
    r - 1 with r = batch_size / base_batch_size, a float >= 0.

  Examples:
    >>> matched_noise_variance(4096, 128)
    31.0

  References:
    Hoffer, Hubara, Soudry 2017, section 4 ("sigma**2 proportional to M") and
    appendix A.
  """
  for name, value in (("batch_size", batch_size), ("base_batch_size", base_batch_size)):
    if not isinstance(value, numbers.Real) or value <= 0:
      raise ValueError(f"{name} must be a positive number of examples, got {value!r}")
  if batch_size < base_batch_size:
    raise ValueError(
      f"multiplicative noise can only add variance: batch_size={batch_size} must be "
      f">= base_batch_size={base_batch_size} to match the small batch's covariance"
    )
  return batch_size / base_batch_size - 1.0


def multiplicative_noise_weights(
  key: jax.Array, batch_size: int, variance: float | jax.Array
) -> jax.Array:
  """Per-sample loss weights z_n ~ N(1, variance) for multiplicative gradient noise.

  Multiply the per-sample losses by these weights before averaging: the
  gradient of mean(z * losses) is Hoffer's noisy estimate (1/M) sum_n g_n z_n.

  Args:
    key: a JAX key; use a fresh one every step (e.g. folded with the step).
    batch_size: the number of samples M in the (global) batch.
    variance: sigma**2, e.g. ``matched_noise_variance(M_L, M_S)``.

  Returns:
    A float32 array of shape ``(batch_size,)``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> losses = jnp.ones(8)
    >>> z = multiplicative_noise_weights(jax.random.key(0), 8, matched_noise_variance(8, 2))
    >>> weighted_loss = jnp.mean(z * losses)

  References:
    Hoffer, Hubara, Soudry 2017, section 4.
  """
  if not isinstance(batch_size, numbers.Integral) or batch_size <= 0:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
  if isinstance(variance, numbers.Real) and variance < 0:
    raise ValueError(f"variance must be >= 0, got {variance!r}")
  std = jnp.sqrt(jnp.asarray(variance, jnp.float32))
  return 1.0 + std * jax.random.normal(key, (batch_size,), jnp.float32)
