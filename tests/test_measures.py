"""The Table 1 measures that must measure what they name.

The update covariance with the white noise included and with batch norm in
training mode (``experiments.analyze.compute.regime_update_fn``); the
scale-invariant layers and the scale-normalized sharpness
(``bigbatch_jax.diagnostics.scale_invariance``).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigbatch_jax.diagnostics import scale_invariance
from bigbatch_jax.training import population_grid
from bigbatch_jax.training import spec as spec_lib
from bigbatch_jax.training.loss import cross_entropy, eval_logits
from bigbatch_jax.training.plan import lr_schedule
from bigbatch_jax.training.setup import build_model, norm_layer
from experiments.analyze.compute import regime_update_fn, update_lr
from experiments.configs import f1
from experiments.table1.rows import variant_config

NUM_TRAIN = 8000  # MNIST-1D's training set in the quick preset


class _Mlp(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Dense(8, bias_init=nn.initializers.normal(1.0))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.Dense(8, bias_init=nn.initializers.normal(1.0))(nn.relu(x))
    x = nn.relu(x)  # no batch norm after the second layer: not scale invariant
    return nn.Dense(3, bias_init=nn.initializers.normal(1.0))(x)


def _mlp_logits():
  model = _Mlp()
  x = jax.random.normal(jax.random.key(0), (32, 5))
  variables = model.init(jax.random.key(1), x)

  def logits(params, inputs):
    out, _ = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      inputs,
      mutable=["batch_stats"],
    )
    return out

  return jax.jit(logits), variables["params"], x


def test_the_scale_invariant_modules_are_the_layers_batch_norm_follows():
  logits, params, x = _mlp_logits()
  assert scale_invariance.scale_invariant_modules(logits, params, x) == [("Dense_0",)]


def test_the_normalized_sharpness_is_lambda_max_times_the_invariant_layers_squared_norm():
  _, params, _ = _mlp_logits()
  expected = float(
    jnp.sum(params["Dense_0"]["kernel"] ** 2) + jnp.sum(params["Dense_0"]["bias"] ** 2)
  )
  norm = scale_invariance.squared_norm(params, [("Dense_0",)])
  assert norm == pytest.approx(expected, rel=1e-6)
  assert scale_invariance.scale_normalized_sharpness(2.5, params, [("Dense_0",)]) == (
    pytest.approx(2.5 * expected, rel=1e-6)
  )


def _row(row):
  """The row's quick-preset plan, config and models (evaluation: BN; training: the row's)."""
  config = variant_config(f1, row, "quick")
  spec = spec_lib.resolve(config, num_train=NUM_TRAIN, num_devices=1)
  plan = spec.plan
  model = build_model(spec, 10, norm_layer(spec, None))
  return plan, config, model


def _start(model, batch_size):
  x = jax.random.normal(jax.random.key(2), (batch_size, 40))
  y = jax.random.randint(jax.random.key(3), (batch_size,), 0, 10)
  variables = model.init(jax.random.key(4), x, train=False)
  return variables["params"], variables["batch_stats"], {"x": x, "y": y}


def test_the_white_noise_adds_lr_squared_alpha_to_each_coordinate_of_the_update():
  plan, config, model = _row("lb+linear+white")
  params, stats, batch = _start(model, plan.batch_size)
  alpha, gamma = population_grid.white_noise(plan, {})
  lr = float(lr_schedule(plan)(0))
  assert lr == pytest.approx(config.regime.lr * plan.batch_size / 64)  # linear scaling
  noisy = jax.jit(regime_update_fn(plan, model, stats, (alpha, gamma)))
  silent = jax.jit(regime_update_fn(plan, model, stats, (0.0, gamma)))
  diffs = []
  for i in range(2):
    key = jax.random.key(10 + i)
    a, b = jax.tree.leaves(noisy(params, batch, key)), jax.tree.leaves(silent(params, batch, key))
    diffs.append(np.concatenate([np.ravel(u - v) for u, v in zip(a, b)]))
  variance = np.var(np.stack(diffs))
  # ~40 000 coordinates x 2 draws: the sample variance is within about 1% of lr^2 alpha.
  assert variance == pytest.approx(lr**2 * alpha, rel=0.05)
  with pytest.raises(ValueError, match="white_noise"):
    regime_update_fn(plan, model, stats)


def test_training_mode_normalizes_each_update_with_its_ghost_batches():
  plan_bn, _, model_bn = _row("lb+lr")
  plan_gbn, _, model_gbn = _row("lb+lr+gbn")
  params, stats, batch = _start(model_bn, plan_bn.batch_size)
  key = jax.random.key(0)

  def update(plan, train_model):
    update_fn = jax.jit(regime_update_fn(plan, model_bn, stats, None, train_model))
    out = update_fn(params, batch, key)
    return np.concatenate([np.ravel(v) for v in jax.tree.leaves(out)])

  # Evaluation mode: the running statistics, so Ghost BN cannot differ from BN.
  np.testing.assert_array_equal(update(plan_bn, None), update(plan_gbn, None))
  whole, ghosts = update(plan_bn, model_bn), update(plan_gbn, model_gbn)
  assert not np.allclose(whole, update(plan_bn, None), rtol=1e-3)  # training mode is used
  assert not np.allclose(ghosts, whole, rtol=1e-3)  # and each row's own normalization


def test_a_warmup_row_is_measured_at_the_rate_its_warmup_reaches():
  plan, _, model = _row("lb+linear+warmup")
  params, stats, batch = _start(model, plan.batch_size)
  reached = float(lr_schedule(plan)(plan.warmup_steps))
  assert plan.warmup_steps > 0 and reached > 2 * float(lr_schedule(plan)(0))
  assert update_lr(plan) == pytest.approx(reached)
  update = jax.jit(regime_update_fn(plan, model, stats))(params, batch, jax.random.key(0))
  grads = jax.grad(lambda p: cross_entropy(eval_logits(model, p, stats, batch["x"]), batch["y"]))(
    params
  )
  for u, g in zip(jax.tree.leaves(update), jax.tree.leaves(grads)):
    np.testing.assert_allclose(u, -reached * g, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("row", ["lb+lars", "lb+lamb"])
def test_a_trust_ratio_row_has_no_sgd_update_to_measure(row):
  plan, _, model = _row(row)
  _, stats, _ = _start(model, 8)
  with pytest.raises(ValueError, match="trust ratio"):
    regime_update_fn(plan, model, stats)
