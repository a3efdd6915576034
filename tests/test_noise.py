"""Multiplicative noise weights, and the update covariance each remedy matches.

Hoffer et al. section 4: the update covariance is eta**2 / M times the
per-sample second moment (eq. 6). At B_L = r B_S it matches B_S with the
square-root learning rate (eq. 7), or at the base learning rate with
multiplicative noise of variance r - 1. Measured here on linear least squares
at its exact minimizer, where the full-data gradient is zero and the formulas
hold exactly for mini-batches drawn with replacement.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bigbatch_jax as bb

NUM_EXAMPLES, DIM = 2048, 3
SMALL, LARGE = 4, 64
LR = 0.1
DRAWS, CHUNKS = 40_000, 20


def _problem():
  kx, ky = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (NUM_EXAMPLES, DIM)) * jnp.array([1.0, 2.0, 0.5])
  y = x @ jnp.array([1.0, -1.0, 0.5]) + jax.random.normal(ky, (NUM_EXAMPLES,))
  w_star = jnp.linalg.solve(x.T @ x, x.T @ y)  # full-data gradient is zero here
  return x, y, w_star


def _updates(batch_size, lr_rule, noise_variance, key):
  """DRAWS update vectors of the real chain: weighted loss, grad, sgd, scaling."""
  x, y, w_star = _problem()
  tx = optax.chain(optax.sgd(LR), bb.scale_by_batch_size(batch_size, SMALL, lr_rule))
  state = tx.init(w_star)

  def one_update(key):
    k_idx, k_noise = jax.random.split(key)
    idx = jax.random.randint(k_idx, (batch_size,), 0, NUM_EXAMPLES)  # with replacement
    weights = bb.multiplicative_noise_weights(k_noise, batch_size, noise_variance)

    def loss(w):
      return jnp.mean(weights * 0.5 * (x[idx] @ w - y[idx]) ** 2)

    updates, _ = tx.update(jax.grad(loss)(w_star), state)
    return updates

  return jax.jit(jax.vmap(one_update))(jax.random.split(key, DRAWS))


def _chunked_covariances(updates):
  chunks = np.asarray(updates).reshape(CHUNKS, DRAWS // CHUNKS, DIM)
  return np.stack([np.cov(c, rowvar=False) for c in chunks])


def _difference_in_standard_errors(a, b):
  """|mean difference| of the covariance entries, in units of its standard error."""
  diff = _chunked_covariances(a) - _chunked_covariances(b)
  stderr = diff.std(axis=0, ddof=1) / np.sqrt(CHUNKS)
  return np.abs(diff.mean(axis=0)) / stderr, np.abs(diff.mean(axis=0))


@pytest.fixture(scope="module")
def small_batch_updates():
  return _updates(SMALL, "none", 0.0, jax.random.key(1))


def test_theory_matches_the_small_batch_covariance(small_batch_updates):
  x, y, w_star = _problem()
  per_sample = x * (x @ w_star - y)[:, None]
  expected = LR**2 / SMALL * per_sample.T @ per_sample / NUM_EXAMPLES  # eq. 6, exact at g = 0
  measured = np.cov(np.asarray(small_batch_updates), rowvar=False)
  np.testing.assert_allclose(measured, expected, rtol=0.05, atol=0.02 * np.abs(expected).max())


@pytest.mark.parametrize(
  ("name", "lr_rule", "variance"),
  [
    ("large batch, sqrt learning rate", "sqrt", 0.0),
    ("large batch, matched multiplicative noise", "none", bb.matched_noise_variance(LARGE, SMALL)),
  ],
)
def test_remedy_matches_the_small_batch_covariance(small_batch_updates, name, lr_rule, variance):
  updates = _updates(LARGE, lr_rule, variance, jax.random.key(2))
  z, _ = _difference_in_standard_errors(updates, small_batch_updates)
  assert z.max() < 4.0, f"{name}: covariance differs by {z.max():.1f} standard errors"


def test_plain_large_batch_does_not_match_and_the_test_detects_it(small_batch_updates):
  updates = _updates(LARGE, "none", 0.0, jax.random.key(2))
  z, _ = _difference_in_standard_errors(updates, small_batch_updates)
  assert z.max() > 20.0
  ratio = np.trace(np.cov(np.asarray(updates), rowvar=False)) / np.trace(
    np.cov(np.asarray(small_batch_updates), rowvar=False)
  )
  np.testing.assert_allclose(ratio, SMALL / LARGE, rtol=0.1)  # r times smaller


def test_matched_variance_is_r_minus_one():
  assert bb.matched_noise_variance(4096, 128) == 31.0
  assert bb.matched_noise_variance(128, 128) == 0.0
  with pytest.raises(ValueError, match="batch_size=64 must be >= base_batch_size=128"):
    bb.matched_noise_variance(64, 128)
  with pytest.raises(ValueError, match="base_batch_size must be a positive"):
    bb.matched_noise_variance(64, 0)


def test_weights_have_unit_mean_and_the_requested_variance():
  weights = bb.multiplicative_noise_weights(jax.random.key(0), 200_000, 31.0)
  assert weights.shape == (200_000,) and weights.dtype == jnp.float32
  np.testing.assert_allclose(weights.mean(), 1.0, atol=0.05)
  np.testing.assert_allclose(weights.var(), 31.0, rtol=0.02)
  np.testing.assert_array_equal(bb.multiplicative_noise_weights(jax.random.key(0), 8, 0.0), 1.0)
  with pytest.raises(ValueError, match="variance must be >= 0"):
    bb.multiplicative_noise_weights(jax.random.key(0), 8, -1.0)
  with pytest.raises(ValueError, match="batch_size must be a positive integer"):
    bb.multiplicative_noise_weights(jax.random.key(0), 0, 1.0)


def test_weighted_loss_gradient_is_the_weighted_sum_of_per_sample_gradients():
  x, y, _ = _problem()
  w = jnp.array([0.3, 0.1, -0.2])
  z = bb.multiplicative_noise_weights(jax.random.key(5), 16, 3.0)
  grad = jax.grad(lambda w: jnp.mean(z * 0.5 * (x[:16] @ w - y[:16]) ** 2))(w)
  per_sample = x[:16] * (x[:16] @ w - y[:16])[:, None]
  np.testing.assert_allclose(grad, (z[:, None] * per_sample).mean(0), rtol=1e-5)
