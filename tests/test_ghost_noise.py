"""Ghost Noise Injection (linen and NNX) against batch norm and the ghost statistics."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from scipy import stats

from bigbatch_jax import nnx as bnnx
from bigbatch_jax.ghost_batch_norm import GhostOptions, ghost_statistics
from bigbatch_jax.ghost_noise import GhostNoiseBatchNorm, ghost_noise_train

MOMENTUM = 0.9


def _inputs(shape, seed=0):
  # Non-zero mean, non-unit and per-example scale: a non-Gaussian batch.
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(seed), shape)
  return x * jnp.exp(
    jax.random.normal(jax.random.key(seed + 1), (shape[0],) + (1,) * (len(shape) - 1))
  )


def _noise(seed):
  return {"ghost_noise": jax.random.key(seed)}


def _variables(x, seed=1):
  """BatchNorm variables with non-trivial parameters and running statistics."""
  bn = nn.BatchNorm(momentum=MOMENTUM)
  variables = bn.init(jax.random.key(seed), x, use_running_average=False)
  return jax.tree.map(
    lambda v: v + 0.1 * jax.random.normal(jax.random.key(seed + 1), v.shape), variables
  )


def _train(module, variables, x, rngs=None):
  """Output, running statistics and parameter gradients of one training call."""

  def loss(params):
    y, updates = module.apply(
      {**variables, "params": params},
      x,
      use_running_average=False,
      mutable=["batch_stats"],
      rngs=rngs or {},
    )
    return jnp.sum(jnp.sin(y)), (y, updates["batch_stats"])

  (_, (y, batch_stats)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
  return y, batch_stats, grads


@pytest.mark.parametrize("shape", [(32, 5), (8, 4, 4, 3)])
def test_noise_off_equals_flax_batchnorm_exactly(shape):
  x = _inputs(shape)
  variables = _variables(x)
  bn = nn.BatchNorm(momentum=MOMENTUM)
  gni = GhostNoiseBatchNorm(momentum=MOMENTUM, ghost_batch_size=None)
  for a, b in zip(_train(gni, variables, x, _noise(0)), _train(bn, variables, x), strict=True):
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("draws", ["per_ghost", "per_example"])
def test_with_noise_running_statistics_are_the_whole_batch_and_evaluation_is_batchnorm(draws):
  x = _inputs((32, 5))
  variables = _variables(x)
  bn = nn.BatchNorm(momentum=MOMENTUM)
  gni = GhostNoiseBatchNorm(momentum=MOMENTUM, ghost_batch_size=4, ghost_draws=draws)
  y, batch_stats, _ = _train(gni, variables, x, _noise(0))
  y_bn, batch_stats_bn, _ = _train(bn, variables, x)
  assert np.abs(np.asarray(y - y_bn)).max() > 0.1  # the noise is on
  jax.tree.map(np.testing.assert_array_equal, batch_stats, batch_stats_bn)
  trained = {**variables, "batch_stats": batch_stats}
  x_eval = _inputs((3, 5), seed=7)
  np.testing.assert_array_equal(
    gni.apply(trained, x_eval, use_running_average=True, rngs=_noise(1)),
    bn.apply(trained, x_eval, use_running_average=True),
  )


def test_the_same_key_gives_the_same_noise_and_another_key_another():
  x = _inputs((32, 5))
  variables = _variables(x)
  gni = GhostNoiseBatchNorm(momentum=MOMENTUM, ghost_batch_size=4)
  y1 = _train(gni, variables, x, _noise(0))[0]
  np.testing.assert_array_equal(y1, _train(gni, variables, x, _noise(0))[0])
  assert not np.allclose(y1, _train(gni, variables, x, _noise(1))[0])


def _injected_noise(x, ghost, draws, seeds):
  """The shift and scale the layer applied to each example and channel, from its outputs.

  With scale 1 and bias 0 the output is ``(x_hat - shift) / scale`` per example
  and channel, so over the positions of one example: std(y) = std(x_hat) / scale
  and mean(y) = (mean(x_hat) - shift) / scale.
  """
  bn = nn.BatchNorm(momentum=MOMENTUM)
  variables = bn.init(jax.random.key(0), x, use_running_average=False)
  x_hat, _ = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  gni = GhostNoiseBatchNorm(momentum=MOMENTUM, ghost_batch_size=ghost, ghost_draws=draws)
  shifts, scales = [], []
  for seed in seeds:
    y, _ = gni.apply(
      variables, x, use_running_average=False, mutable=["batch_stats"], rngs=_noise(seed)
    )
    scale = jnp.std(x_hat, axis=1) / jnp.std(y, axis=1)
    shifts.append(jnp.mean(x_hat, axis=1) - scale * jnp.mean(y, axis=1))
    scales.append(scale)
  return np.asarray(x_hat), np.concatenate(shifts), np.concatenate(scales)


def _ghost_statistics_sample(x_hat, ghost, num, seed=0):
  """(shift, scale) of ``num`` ghost batches drawn with replacement, by ``ghost_statistics``."""
  indices = np.random.default_rng(seed).integers(0, x_hat.shape[0], (num, ghost))
  mean, var = ghost_statistics(jnp.asarray(x_hat[indices]), (1, 2), plain=False)
  full_var = np.var(x_hat, axis=(0, 1))
  return np.asarray(mean), np.sqrt((np.asarray(var) + 1e-3) / (full_var + 1e-3))


def _within_sampling_error(a, b, sigmas=5.0):
  """Means and standard deviations of two samples agree within ``sigmas`` standard errors."""
  se_mean = np.sqrt(a.var() / a.size + b.var() / b.size)
  assert abs(a.mean() - b.mean()) < sigmas * se_mean, (a.mean(), b.mean(), se_mean)
  # The standard error of a sample std is about std / sqrt(2 n) (normal theory, as a
  # bound here: these statistics are close to normal and chi distributed).
  se_std = np.sqrt(a.var() / (2 * a.size) + b.var() / (2 * b.size))
  assert abs(a.std() - b.std()) < sigmas * se_std, (a.std(), b.std(), se_std)


def test_injected_shift_and_scale_have_the_distribution_of_the_ghost_statistics():
  ghost, batch, positions = 8, 64, 16
  x = _inputs((batch, positions, 2))
  x_hat, shift, scale = _injected_noise(x, ghost, "per_example", seeds=range(40))
  ref_shift, ref_scale = _ghost_statistics_sample(x_hat, ghost, num=shift.shape[0], seed=3)
  for c in range(x.shape[-1]):
    _within_sampling_error(shift[:, c], ref_shift[:, c])
    _within_sampling_error(scale[:, c], ref_scale[:, c])
    # Each example's draw is independent given the batch: the whole distributions agree.
    assert stats.ks_2samp(shift[:, c], ref_shift[:, c]).pvalue > 1e-4
    assert stats.ks_2samp(scale[:, c], ref_scale[:, c]).pvalue > 1e-4
  # The paper's moments, exact for N draws with replacement from this batch: the
  # shift has mean 0 and variance Var(example means) / N, and the ghost variance
  # E[s2] = mean within-example variance + (N - 1) / N Var(example means).
  means, within = x_hat.mean(axis=1), x_hat.var(axis=1).mean(axis=0)
  n = shift.shape[0]
  expected_var = means.var(axis=0) / ghost
  se_var = expected_var * np.sqrt(2 / n)
  np.testing.assert_array_less(np.abs(shift.mean(axis=0)), 5 * np.sqrt(expected_var / n))
  np.testing.assert_array_less(np.abs(shift.var(axis=0) - expected_var), 5 * se_var)
  full_var = x_hat.var(axis=(0, 1))
  s2 = scale**2 * (full_var + 1e-3) - 1e-3
  expected_s2 = within + (ghost - 1) / ghost * means.var(axis=0)
  np.testing.assert_array_less(np.abs(s2.mean(axis=0) - expected_s2), 5 * s2.std(axis=0) / n**0.5)


def test_per_ghost_draws_share_one_draw_per_block_of_ghost_size_examples():
  ghost = 4
  x = _inputs((32, 8, 2))
  _, shift, scale = _injected_noise(x, ghost, "per_ghost", seeds=[0])
  blocks = shift.reshape(-1, ghost, 2)
  np.testing.assert_allclose(blocks, np.broadcast_to(blocks[:, :1], blocks.shape), atol=1e-4)
  assert len(np.unique(np.round(blocks[:, 0, 0], 4))) == blocks.shape[0]
  blocks = scale.reshape(-1, ghost, 2)
  np.testing.assert_allclose(blocks, np.broadcast_to(blocks[:, :1], blocks.shape), rtol=1e-4)


class _TwoLayer(nn.Module):
  norm: functools.partial

  @nn.compact
  def __call__(self, x, train: bool):
    x = self.norm(name="norm")(nn.Dense(6)(x), use_running_average=not train)
    return nn.Dense(3)(nn.relu(x))


@pytest.mark.parametrize("draws", ["per_ghost", "per_example"])
def test_shard_map_over_four_devices_equals_one_device_on_the_global_batch(draws):
  ghost, num_devices = 4, 4
  x = _inputs((num_devices * 2 * ghost, 5))
  layer = functools.partial(
    GhostNoiseBatchNorm, ghost_batch_size=ghost, ghost_draws=draws, momentum=MOMENTUM
  )
  sharded, single = _TwoLayer(functools.partial(layer, axis_name="batch")), _TwoLayer(layer)
  variables = single.init(jax.random.key(0), x, train=False)
  key = jax.random.key(5)

  def call(model, params, batch_stats, x):
    def loss(params):
      y, updates = model.apply(
        {"params": params, "batch_stats": batch_stats},
        x,
        train=True,
        mutable=["batch_stats"],
        rngs={"ghost_noise": key},
      )
      return jnp.mean(y**2), (y, updates["batch_stats"])

    (_, (y, stats)), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return y, grads, stats

  def local(params, batch_stats, x):
    y, grads, stats = call(sharded, params, batch_stats, x)
    return y, jax.lax.pmean(grads, "batch"), stats

  mesh = Mesh(np.array(jax.devices()[:num_devices]), ("batch",))
  fn = jax.shard_map(
    local, mesh=mesh, in_specs=(P(), P(), P("batch")), out_specs=(P("batch"), P(), P()),
    check_vma=False,
  )  # fmt: skip
  y, grads, stats = jax.jit(fn)(variables["params"], variables["batch_stats"], x)
  y1, grads1, stats1 = call(single, variables["params"], variables["batch_stats"], x)
  np.testing.assert_allclose(y, y1, rtol=1e-4, atol=1e-5)
  tree_close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5)
  jax.tree.map(tree_close, grads, grads1)
  jax.tree.map(tree_close, stats, stats1)


@pytest.mark.parametrize(
  ("kwargs", "batch", "message"),
  [
    ({"ghost_batch_size": 1}, 8, "ghost_batch_size=1 must be an integer >= 2"),
    ({"ghost_batch_size": 4, "ghost_draws": "all"}, 8, "unknown ghost_draws='all'"),
    ({"ghost_batch_size": 4, "noise_epsilon": 0.0}, 8, "noise_epsilon=0.0 must be a number > 0"),
    ({"ghost_batch_size": 3}, 8, "ghost_batch_size=3 consecutive examples, which does not divide"),
    (
      {"ghost_batch_size": 2, "axis_index_groups": [[0, 1]]},
      8,
      "axis_index_groups is not supported with ghost noise",
    ),
  ],
)
def test_bad_options_errors_name_the_value(kwargs, batch, message):
  x = _inputs((batch, 3))
  gni = GhostNoiseBatchNorm(**kwargs)
  with pytest.raises(ValueError, match=message):
    gni.init_with_output(
      {"params": jax.random.key(0), "ghost_noise": jax.random.key(1)}, x, use_running_average=False
    )
    gni.apply(_variables(x), x, use_running_average=False, mutable=True, rngs=_noise(0))


def test_a_mask_with_the_noise_on_is_an_error_and_with_it_off_is_batchnorm():
  x, mask = _inputs((8, 3)), jnp.arange(8)[:, None] < 6
  variables = _variables(x)
  with pytest.raises(ValueError, match="a mask is not supported with ghost noise"):
    GhostNoiseBatchNorm(ghost_batch_size=2).apply(
      variables, x, use_running_average=False, mask=mask, mutable=True, rngs=_noise(0)
    )
  y = GhostNoiseBatchNorm().apply(variables, x, use_running_average=False, mask=mask, mutable=True)
  y_bn = nn.BatchNorm().apply(variables, x, use_running_average=False, mask=mask, mutable=True)
  # GhostBatchNorm's masked statistics (the same path) reduce a (1, batch) view: last-bit
  # round-off against flax's.
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), y, y_bn)


class _NNXModel(nnx.Module):
  def __init__(self, rngs):
    self.linear = nnx.Linear(5, 6, rngs=rngs)
    self.norm = nnx.BatchNorm(6, momentum=MOMENTUM, rngs=rngs)

  def __call__(self, x):
    return self.norm(self.linear(x))


def test_nnx_noise_off_is_nnx_batchnorm_and_noise_on_is_the_shared_function():
  x = _inputs((16, 6))
  plain = bnnx.GhostNoiseBatchNorm(6, momentum=MOMENTUM, rngs=nnx.Rngs(0))
  reference = nnx.BatchNorm(6, momentum=MOMENTUM, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(plain(x), reference(x))
  np.testing.assert_array_equal(plain.mean[...], reference.mean[...])
  np.testing.assert_array_equal(plain.var[...], reference.var[...])
  noisy = bnnx.GhostNoiseBatchNorm(6, ghost_batch_size=4, momentum=MOMENTUM, rngs=nnx.Rngs(0))
  key = jax.random.key(3)
  expected, _, _ = ghost_noise_train(
    x, noisy.scale[...], noisy.bias[...], (1,), GhostOptions.of(noisy), key=key
  )
  np.testing.assert_array_equal(noisy(x, rngs=key), expected)
  np.testing.assert_array_equal(noisy.mean[...], reference.mean[...])
  assert not np.allclose(expected, reference(x))


def test_nnx_ghostify_with_ghost_noise_keeps_the_variables_and_evaluation():
  x = _inputs((16, 5))
  model, reference = _NNXModel(nnx.Rngs(0)), _NNXModel(nnx.Rngs(0))
  scale = model.norm.scale
  assert bnnx.ghostify(model, 4, ghost_noise=nnx.Rngs(ghost_noise=1)) == 1  # one batch norm
  assert isinstance(model.norm, bnnx.GhostNoiseBatchNorm)
  assert model.norm.scale is scale and model.norm.momentum == MOMENTUM
  model.eval()
  reference.eval()
  np.testing.assert_array_equal(model(x), reference(x))
  model.train()
  reference.train()
  y1 = model(x)
  reference(x)
  np.testing.assert_array_equal(model.norm.mean[...], reference.norm.mean[...])
  # The layer's stream advances: the next call draws other ghost batches.
  assert not np.allclose(y1, model(x))
  with pytest.raises(ValueError, match="ghost_batch_size=1"):
    bnnx.ghostify(_NNXModel(nnx.Rngs(0)), 1, ghost_noise=nnx.Rngs(1))
