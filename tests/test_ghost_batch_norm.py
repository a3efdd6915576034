"""GhostBatchNorm against flax.linen.BatchNorm and hand-computed statistics."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from bigbatch_jax import GhostBatchNorm, ghost_running_average

MOMENTUM = 0.9


def _inputs(shape, seed=0):
  # Non-zero mean and non-unit scale so statistics matter.
  return 3.0 + 2.0 * jax.random.normal(jax.random.key(seed), shape)


def _trained_variables(module, x, steps=1, seed=1):
  """Variables after `steps` training calls, from non-trivial parameters."""
  variables = module.init(jax.random.key(seed), x, use_running_average=False)
  variables = jax.tree.map(
    lambda v: v + 0.1 * jax.random.normal(jax.random.key(seed + 1), v.shape), variables
  )
  for _ in range(steps):
    _, updates = module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    variables = {**variables, **updates}
  return variables


def _loss_and_grads(module, variables, x):
  def loss(params, x):
    y, updates = module.apply(
      {**variables, "params": params}, x, use_running_average=False, mutable=["batch_stats"]
    )
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size), (y, updates)

  (value, (y, updates)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
    variables["params"], x
  )
  return value, y, updates["batch_stats"], grads


@pytest.mark.parametrize("shape", [(32, 5), (8, 4, 4, 3)])
@pytest.mark.parametrize("ghost", [None, "batch"])
def test_one_ghost_batch_equals_flax_batchnorm(shape, ghost):
  x = _inputs(shape)
  ghost_size = None if ghost is None else shape[0]
  gbn = GhostBatchNorm(momentum=MOMENTUM, ghost_batch_size=ghost_size)
  # One ghost of the whole batch takes the ghost path, whose (shifted)
  # variance is exact: compare it with flax's two-pass variance.
  bn = nn.BatchNorm(momentum=MOMENTUM, use_fast_variance=ghost is None)
  variables = _trained_variables(bn, x, steps=2)

  value, y, stats, grads = _loss_and_grads(gbn, variables, x)
  value_bn, y_bn, stats_bn, grads_bn = _loss_and_grads(bn, variables, x)

  np.testing.assert_allclose(y, y_bn, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(value, value_bn, rtol=1e-6 if ghost is None else 1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), stats, stats_bn)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads, grads_bn)
  # Same variable tree as nn.BatchNorm: a drop-in.
  assert jax.tree.structure(gbn.init(jax.random.key(0), x, use_running_average=False)) == (
    jax.tree.structure(bn.init(jax.random.key(0), x, use_running_average=False))
  )
  # Inference uses the running statistics, like nn.BatchNorm.
  np.testing.assert_allclose(
    gbn.apply(variables, x, use_running_average=True),
    bn.apply(variables, x, use_running_average=True),
    rtol=1e-6,
  )


# Each ghost-variance rule against nn.BatchNorm computing the same variance.
FAST_VARIANCE = {"shifted": False, "two_pass": False, "one_pass": True}


@pytest.mark.parametrize("num_ghosts", [1, 2, 32])
@pytest.mark.parametrize("feature_shape", [(6,), (2, 2, 3)])
@pytest.mark.parametrize("ghost_variance", ["shifted", "one_pass"])
def test_sequential_update_equals_batchnorm_on_each_ghost_in_turn(
  num_ghosts, feature_shape, ghost_variance
):
  ghost = 4
  x = _inputs((num_ghosts * ghost, *feature_shape), seed=num_ghosts)
  gbn = GhostBatchNorm(momentum=MOMENTUM, ghost_batch_size=ghost, ghost_variance=ghost_variance)
  bn = nn.BatchNorm(momentum=MOMENTUM, use_fast_variance=FAST_VARIANCE[ghost_variance])
  variables = _trained_variables(bn, x[:ghost])

  y, updates = gbn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])

  # The reference code's semantics: nn.BatchNorm on each ghost batch in order,
  # threading the running statistics.
  stats, outputs = variables["batch_stats"], []
  for k in range(num_ghosts):
    chunk = x[k * ghost : (k + 1) * ghost]
    y_k, chunk_updates = bn.apply(
      {**variables, "batch_stats": stats}, chunk, use_running_average=False, mutable=["batch_stats"]
    )
    stats = chunk_updates["batch_stats"]
    outputs.append(y_k)
  np.testing.assert_allclose(y, jnp.concatenate(outputs), rtol=1e-5, atol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    updates["batch_stats"],
    stats,
  )


@pytest.mark.parametrize("shape", [(12, 5), (6, 3, 2, 4)])
@pytest.mark.parametrize("use_scale, use_bias", [(True, True), (False, True), (True, False)])
def test_several_ghosts_have_the_outputs_and_gradients_of_batchnorm_per_ghost(
  shape, use_scale, use_bias
):
  # The ghost path normalizes in one affine pass (not flax's _normalize): its
  # outputs and its gradients for the input, scale and bias must still be
  # those of nn.BatchNorm applied to each ghost batch.
  ghost = shape[0] // 3
  x = _inputs(shape, seed=3)
  options = {"momentum": MOMENTUM, "use_scale": use_scale, "use_bias": use_bias}
  gbn = GhostBatchNorm(ghost_batch_size=ghost, **options)
  bn = nn.BatchNorm(**options)
  variables = _trained_variables(bn, x)

  def per_ghost(params, x):
    chunks = [
      bn.apply(
        {**variables, "params": params}, chunk, use_running_average=False, mutable=["batch_stats"]
      )[0]
      for chunk in jnp.split(x, 3)
    ]
    return jnp.concatenate(chunks)

  def ghost_batch(params, x):
    return gbn.apply(
      {**variables, "params": params}, x, use_running_average=False, mutable=["batch_stats"]
    )[0]

  def loss(apply):
    def fn(params, x):
      y = apply(params, x)
      return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size)

    return jax.value_and_grad(fn, argnums=(0, 1))

  (value, grads), (value_ref, grads_ref) = (
    loss(ghost_batch)(variables["params"], x),
    loss(per_ghost)(variables["params"], x),
  )
  np.testing.assert_allclose(
    ghost_batch(variables["params"], x), per_ghost(variables["params"], x), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(value, value_ref, rtol=1e-5)
  assert jax.tree.structure(grads) == jax.tree.structure(grads_ref)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads, grads_ref
  )


def test_ghost_path_in_bfloat16_keeps_float32_statistics_and_parameters():
  x = _inputs((16, 6))
  gbn = GhostBatchNorm(momentum=MOMENTUM, ghost_batch_size=4, dtype=jnp.bfloat16)
  reference = GhostBatchNorm(momentum=MOMENTUM, ghost_batch_size=4)
  variables = _trained_variables(reference, x)
  y, updates = gbn.apply(
    variables, x.astype(jnp.bfloat16), use_running_average=False, mutable=["batch_stats"]
  )
  y_ref, updates_ref = reference.apply(
    variables, x, use_running_average=False, mutable=["batch_stats"]
  )
  assert y.dtype == jnp.bfloat16
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(updates))
  np.testing.assert_allclose(np.asarray(y, np.float32), y_ref, rtol=2e-2, atol=2e-2)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2), updates, updates_ref
  )


def test_two_halves_equal_one_call_with_half_ghost_size():
  x = _inputs((16, 7))
  half = GhostBatchNorm(momentum=MOMENTUM, ghost_batch_size=8)
  whole = GhostBatchNorm(momentum=MOMENTUM)
  variables = _trained_variables(whole, x)
  y = half.apply(variables, x, use_running_average=False, mutable=["batch_stats"])[0]
  first = whole.apply(variables, x[:8], use_running_average=False, mutable=["batch_stats"])[0]
  second = whole.apply(variables, x[8:], use_running_average=False, mutable=["batch_stats"])[0]
  np.testing.assert_allclose(y, jnp.concatenate([first, second]), rtol=1e-6, atol=1e-6)
  # And it is not plain batch norm over the whole batch.
  y_bn = whole.apply(variables, x, use_running_average=False, mutable=["batch_stats"])[0]
  assert np.max(np.abs(y - y_bn)) > 1e-2


def test_mean_update_is_one_step_with_the_mean_of_ghost_statistics():
  ghost, num_ghosts = 4, 3
  x = _inputs((ghost * num_ghosts, 5))
  gbn = GhostBatchNorm(momentum=MOMENTUM, ghost_batch_size=ghost, stats_update="mean")
  variables = _trained_variables(gbn, x[:ghost])
  _, updates = gbn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  chunks = np.asarray(x).reshape(num_ghosts, ghost, 5)
  old = variables["batch_stats"]
  expected_mean = MOMENTUM * old["mean"] + (1 - MOMENTUM) * chunks.mean(axis=1).mean(axis=0)
  expected_var = MOMENTUM * old["var"] + (1 - MOMENTUM) * chunks.var(axis=1).mean(axis=0)
  np.testing.assert_allclose(updates["batch_stats"]["mean"], expected_mean, rtol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["var"], expected_var, rtol=1e-5)
  # Differs from the sequential rule.
  seq = GhostBatchNorm(momentum=MOMENTUM, ghost_batch_size=ghost)
  _, seq_updates = seq.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  assert not np.allclose(seq_updates["batch_stats"]["mean"], expected_mean, rtol=1e-3)


def test_closed_form_running_average_by_hand():
  running = jnp.array([1.0])
  stats = jnp.array([[2.0], [4.0]])
  m = 0.5
  # Two EMA steps: 0.5*1 + 0.5*2 = 1.5, then 0.5*1.5 + 0.5*4 = 2.75.
  np.testing.assert_allclose(ghost_running_average(running, stats, m, "sequential"), [2.75])
  np.testing.assert_allclose(ghost_running_average(running, stats, m, "mean"), [2.0])


def test_inference_uses_running_statistics_at_any_batch_size():
  x = _inputs((32, 5))
  gbn = GhostBatchNorm(momentum=MOMENTUM, ghost_batch_size=8)
  variables = _trained_variables(gbn, x, steps=3)
  stats, params = variables["batch_stats"], variables["params"]
  for batch in (1, 3, 32):
    y = gbn.apply(variables, x[:batch], use_running_average=True)
    expected = (x[:batch] - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * params["scale"] + (
      params["bias"]
    )
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_init_accepts_a_batch_the_ghost_size_does_not_divide():
  variables = GhostBatchNorm(ghost_batch_size=8).init(
    jax.random.key(0), jnp.ones((1, 5)), use_running_average=False
  )
  assert variables["params"]["scale"].shape == (5,)


@pytest.mark.parametrize(
  ("kwargs", "batch", "message"),
  [
    ({"ghost_batch_size": 8}, 12, r"ghost_batch_size=8 does not divide the local batch of 12"),
    ({"ghost_batch_size": 16}, 8, r"ghost_batch_size=16 does not divide the local batch of 8"),
    ({"ghost_batch_size": 1}, 8, r"ghost_batch_size=1 must be an integer >= 2"),
    ({"ghost_batch_size": 0}, 8, r"ghost_batch_size=0 must be an integer >= 2"),
    ({"ghost_batch_size": 4, "stats_update": "ema"}, 8, r"unknown stats_update='ema'"),
    ({"ghost_batch_size": 4, "axis": 0}, 8, r"axis=0 includes the batch axis"),
  ],
)
def test_bad_configuration_errors_name_the_sizes(kwargs, batch, message):
  module = GhostBatchNorm(**kwargs)
  x = jnp.ones((batch, 3))
  variables = {
    "params": {"scale": jnp.ones(3), "bias": jnp.zeros(3)},
    "batch_stats": {"mean": jnp.zeros(3), "var": jnp.ones(3)},
  }
  with pytest.raises(ValueError, match=message):
    module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])


def test_mask_with_one_ghost_equals_flax_batchnorm():
  x = _inputs((12, 4))
  mask = (jnp.arange(12) % 3 != 0)[:, None]
  bn, gbn = nn.BatchNorm(momentum=MOMENTUM), GhostBatchNorm(momentum=MOMENTUM)
  variables = _trained_variables(bn, x)
  y, s = gbn.apply(variables, x, use_running_average=False, mask=mask, mutable=["batch_stats"])
  y_bn, s_bn = bn.apply(variables, x, use_running_average=False, mask=mask, mutable=["batch_stats"])
  np.testing.assert_allclose(y, y_bn, rtol=1e-6, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), s, s_bn)


class _TwoLayer(nn.Module):
  norm: functools.partial

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(6)(x)
    x = self.norm(use_running_average=not train, name="norm")(x)
    return nn.Dense(3)(nn.relu(x))


def _sharded_train_call(model, variables, x, num_devices, check_vma=False):
  mesh = Mesh(np.array(jax.devices()[:num_devices]), ("batch",))

  def local(params, batch_stats, x):
    def loss(params):
      y, updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
      )
      return jnp.mean(y**2), (y, updates["batch_stats"])

    (_, (y, stats)), grads = jax.value_and_grad(loss, has_aux=True)(params)
    if check_vma:
      # With varying-manual-axes checks, the gradient of replicated params is
      # already summed over devices.
      return y, jax.tree.map(lambda g: g / num_devices, grads), stats
    return y, jax.lax.pmean(grads, "batch"), stats

  fn = jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(P(), P(), P("batch")),
    out_specs=(P("batch"), P(), P()),
    check_vma=check_vma,
  )
  return jax.jit(fn)(variables["params"], variables["batch_stats"], x)


def _single_train_call(model, variables, x):
  def loss(params):
    y, updates = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    return jnp.mean(y**2), (y, updates["batch_stats"])

  (_, (y, stats)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
  return y, grads, stats


@pytest.mark.parametrize("check_vma", [False, True])
@pytest.mark.parametrize("stats_update", ["sequential", "mean"])
def test_shard_map_over_four_devices_equals_one_device_on_the_global_batch(stats_update, check_vma):
  ghost, num_devices = 4, 4
  x = _inputs((num_devices * 2 * ghost, 5))
  sharded_model = _TwoLayer(
    functools.partial(
      GhostBatchNorm,
      ghost_batch_size=ghost,
      momentum=MOMENTUM,
      axis_name="batch",
      stats_update=stats_update,
    )
  )
  single_model = _TwoLayer(
    functools.partial(
      GhostBatchNorm, ghost_batch_size=ghost, momentum=MOMENTUM, stats_update=stats_update
    )
  )
  variables = single_model.init(jax.random.key(0), x, train=False)

  y, grads, stats = _sharded_train_call(sharded_model, variables, x, num_devices, check_vma)
  y1, grads1, stats1 = _single_train_call(single_model, variables, x)

  # Float32 round-off differs between the sharded and unsharded dots (~1e-5).
  np.testing.assert_allclose(y, y1, rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads, grads1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), stats, stats1)
  # The sequential rule depends on the order of ghost batches: a shuffled
  # device order would give different running statistics.
  if stats_update == "sequential":
    permuted = jnp.concatenate([x[8:16], x[:8], x[16:]])
    _, _, stats_permuted = _single_train_call(single_model, variables, permuted)
    assert not np.allclose(stats_permuted["norm"]["mean"], stats1["norm"]["mean"], rtol=1e-6)


def test_no_ghost_size_with_axis_name_is_flax_cross_device_batchnorm():
  x = _inputs((16, 5))
  gbn_model = _TwoLayer(functools.partial(GhostBatchNorm, momentum=MOMENTUM, axis_name="batch"))
  bn_model = _TwoLayer(functools.partial(nn.BatchNorm, momentum=MOMENTUM, axis_name="batch"))
  variables = bn_model.init(jax.random.key(0), x, train=False)
  y, grads, stats = _sharded_train_call(gbn_model, variables, x, 4)
  y_bn, grads_bn, stats_bn = _sharded_train_call(bn_model, variables, x, 4)
  np.testing.assert_allclose(y, y_bn, rtol=1e-6, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, grads_bn)
  np.testing.assert_allclose(stats["norm"]["var"], stats_bn["norm"]["var"], rtol=1e-6)
  # Cross-device statistics: equal to one device on the whole batch.
  single = _TwoLayer(functools.partial(GhostBatchNorm, momentum=MOMENTUM))
  y1, _, _ = _single_train_call(single, variables, x)
  np.testing.assert_allclose(y, y1, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ghost_variance", ["shifted", "two_pass"])
@pytest.mark.parametrize("mean", [100.0, 3000.0])
def test_ghost_statistics_stay_accurate_for_a_large_mean(ghost_variance, mean):
  # E[x^2] - E[x]^2 in float32 cancels at a large mean: at 3000 (std 1) the
  # variance comes out 0 and outputs scale by ~316 (measured).
  ghost = 32
  x = mean + jax.random.normal(jax.random.key(7), (256, 8))
  gbn = GhostBatchNorm(momentum=MOMENTUM, ghost_batch_size=ghost, ghost_variance=ghost_variance)
  variables = gbn.init(jax.random.key(0), x, use_running_average=False)
  y, updates = gbn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])

  chunks = np.asarray(x, np.float64).reshape(-1, ghost, 8)
  expected = (chunks - chunks.mean(axis=1, keepdims=True)) / np.sqrt(
    chunks.var(axis=1, keepdims=True) + 1e-5
  )
  np.testing.assert_allclose(y, expected.reshape(x.shape), atol=2e-3)
  running = ghost_running_average(
    jnp.ones(8, jnp.float64), jnp.asarray(chunks.var(axis=1)), MOMENTUM
  )
  np.testing.assert_allclose(updates["batch_stats"]["var"], running, rtol=1e-3)


def test_one_pass_ghost_variance_cancels_at_a_large_mean():
  # The guard above can fail: flax's fast variance on the ghost path is off.
  x = 3000.0 + jax.random.normal(jax.random.key(7), (256, 8))
  gbn = GhostBatchNorm(ghost_batch_size=32, ghost_variance="one_pass")
  variables = gbn.init(jax.random.key(0), x, use_running_average=False)
  y, _ = gbn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  assert np.max(np.abs(y)) > 10


def test_axis_index_groups_keep_running_statistics_per_group():
  # Devices [0, 1] and [2, 3] are two groups: each group's running statistics
  # are those of one device holding the group's batch, in device order.
  ghost, groups = 4, [[0, 1], [2, 3]]
  x = _inputs((4, 2 * ghost, 5))
  grouped = GhostBatchNorm(
    momentum=MOMENTUM, ghost_batch_size=ghost, axis_name="batch", axis_index_groups=groups
  )
  single = GhostBatchNorm(momentum=MOMENTUM, ghost_batch_size=ghost)
  variables = _trained_variables(single, x[0])

  def train(x):
    return grouped.apply(variables, x, use_running_average=False, mutable=["batch_stats"])

  y, updates = jax.pmap(train, axis_name="batch", devices=jax.devices()[:4])(x)
  for group in groups:
    batch = jnp.concatenate([x[d] for d in group])
    y1, updates1 = single.apply(
      variables, batch, use_running_average=False, mutable=["batch_stats"]
    )
    np.testing.assert_allclose(jnp.concatenate([y[d] for d in group]), y1, rtol=1e-5, atol=1e-5)
    for d in group:
      jax.tree.map(
        lambda a, b, d=d: np.testing.assert_allclose(a[d], b, rtol=1e-5, atol=1e-6),
        updates,
        updates1,
      )
  assert not np.allclose(updates["batch_stats"]["mean"][0], updates["batch_stats"]["mean"][2])
