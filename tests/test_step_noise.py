"""The real train step's update covariance: LB is SB / r, LB+mult is SB (Hoffer eq. 6, section 4).

One update of ``train_step`` from a fresh optimizer state is
-lr * (g_B + wd * w), with g_B the (noise-weighted) mean gradient of the
batch. For batches of M examples drawn with replacement and weights
z ~ N(1, sigma**2), cov(g_B) = ((1 + sigma**2) S - g g^T) / M, with S the
per-example second moment and g the mean gradient (bigbatch_jax/noise.py
derives it). A linear softmax classifier (no batch norm, so per-example
gradients do not depend on the rest of the batch) gives S and g exactly from
per-example gradients computed here; ``diagnostics.update_covariance``
measures the step's covariance over many batches, in groups whose spread
gives the estimator's standard error.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigbatch_jax import diagnostics, training
from tests import tiny_run
from tests.test_training import tiny_config

NUM_EXAMPLES, DIM, CLASSES = 256, 8, 4
GROUPS, PER_GROUP = 20, 200


class Linear(nn.Module):
  """Softmax regression, called like the library's models."""

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    return nn.Dense(CLASSES)(x)


def _data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(NUM_EXAMPLES, DIM)).astype(np.float32)
  y = rng.integers(0, CLASSES, NUM_EXAMPLES).astype(np.int32)  # random labels: |g| small
  return jnp.asarray(x), jnp.asarray(y)


def _exact_moments(params, x, y):
  """tr S and |g|**2 from per-example gradients (a test may materialize them)."""

  def loss(p, xi, yi):
    logits = Linear().apply({"params": p}, xi[None], train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]

  per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(params, x, y)
  flat = jnp.concatenate([g.reshape(NUM_EXAMPLES, -1) for g in jax.tree.leaves(per_example)], 1)
  mean = jnp.mean(flat, 0)
  return float(jnp.mean(jnp.sum(flat**2, 1))), float(mean @ mean)


def _measured_trace(variant, x, y, params, num_devices=1):
  """Mean and standard error of tr cov(dw) of the real step, over GROUPS groups of batches."""
  config = tiny_config(variant)
  plan = training.make_plan(config, num_train=NUM_EXAMPLES, num_devices=num_devices)
  model = Linear()
  tx = training.make_optimizer(plan, jax.random.key(1))
  step, state, _ = tiny_run.sharded_step(
    plan, model, tx, x[:1], num_devices=num_devices, noise_variance=plan.noise_variance
  )

  def update_fn(p, batch, key):
    # A fresh state at p; the key is the one the step folds into its noise key.
    new, _ = step(state.replace(params=p, key=key), batch)
    return jax.tree.map(jnp.subtract, new.params, p)

  batch_size = plan.batch_size
  index = jax.random.randint(jax.random.key(2), (GROUPS, PER_GROUP, batch_size), 0, NUM_EXAMPLES)
  batches = {"x": x[index], "y": y[index]}
  keys = jax.random.split(jax.random.key(3), GROUPS)
  traces = jax.jit(
    lambda b, k: jax.lax.map(
      lambda a: diagnostics.update_covariance(update_fn, params, a[0], a[1])["trace"], (b, k)
    )
  )(batches, keys)
  traces = np.asarray(traces, np.float64)
  return plan, traces.mean(), traces.std(ddof=1) / np.sqrt(GROUPS)


def test_real_step_update_covariance_is_sb_over_r_for_lb_and_sb_for_lb_mult():
  x, y = _data()
  params = Linear().init(jax.random.key(0), x[:1], train=False)["params"]
  trace_s, grad_sq = _exact_moments(params, x, y)
  trace_sigma = trace_s - grad_sq
  measured, expected = {}, {}
  # lb+mult on 4 devices: each draws its slice of the global batch's weights.
  for variant, num_devices in (("sb", 1), ("lb", 1), ("lb+mult", 4)):
    plan, mean, stderr = _measured_trace(variant, x, y, params, num_devices)
    lr, m, sigma2 = plan.regime.lr * plan.lr_scale, plan.batch_size, plan.noise_variance
    expected[variant] = lr**2 * ((1 + sigma2) * trace_s - grad_sq) / m
    measured[variant] = mean
    # 4 standard errors of the group mean (t with 19 degrees of freedom: p < 0.001).
    assert mean == pytest.approx(expected[variant], abs=4 * stderr), (variant, mean, stderr)
    assert stderr < 0.05 * expected[variant]  # tight enough to tell the regimes apart
  r = 64 / 16
  # The closed forms: LB is SB / r exactly, LB+mult is SB up to |g|^2 terms.
  assert expected["sb"] == pytest.approx(0.05**2 * trace_sigma / 16)
  assert expected["lb"] == pytest.approx(expected["sb"] / r)
  assert expected["lb+mult"] == pytest.approx(expected["sb"], rel=0.05)
  assert measured["lb"] / measured["sb"] == pytest.approx(1 / r, rel=0.15)
  assert measured["lb+mult"] / measured["sb"] == pytest.approx(1.0, rel=0.15)
