"""bigbatch_jax.nnx: GhostBatchNorm against nnx.BatchNorm and the linen module; ghostify."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from bigbatch_jax import GhostBatchNorm as LinenGhostBatchNorm
from bigbatch_jax import noise, transforms
from bigbatch_jax.nnx import GhostBatchNorm, ghostify

MOMENTUM = 0.9


def _inputs(shape, seed=0):
  # Non-zero mean and non-unit scale so statistics matter.
  return 3.0 + 2.0 * jax.random.normal(jax.random.key(seed), shape)


def _perturb(module, seed=1):
  """Non-trivial parameters and running statistics, the same for any seed's module."""
  state = nnx.state(module)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [v + 0.1 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)]
  nnx.update(module, jax.tree.unflatten(treedef, leaves))
  return module


def _train_call(module, x):
  """(loss, outputs, param grads, new batch stats) of one training call."""

  def loss_fn(module):
    y = module(x)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size), y

  (value, y), grads = nnx.value_and_grad(loss_fn, has_aux=True)(module)
  return value, y, grads, nnx.state(module, nnx.BatchStat)


def _assert_trees_close(a, b, **tol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, **tol), a, b)


@pytest.mark.parametrize("shape", [(32, 5), (8, 4, 4, 3)])
@pytest.mark.parametrize("ghost", [None, "batch"])
def test_no_ghost_size_equals_nnx_batchnorm(shape, ghost):
  features = shape[-1]
  x = _inputs(shape)
  ghost_size = None if ghost is None else shape[0]
  gbn = _perturb(GhostBatchNorm(features, ghost_batch_size=ghost_size, rngs=nnx.Rngs(0)))
  # One ghost batch of the whole batch: the ghost path, whose (shifted)
  # variance is exact, so against flax's two-pass variance.
  bn = _perturb(nnx.BatchNorm(features, use_fast_variance=ghost is None, rngs=nnx.Rngs(0)))
  # Same variables, same names and types: a drop-in.
  assert jax.tree.structure(nnx.state(gbn)) == jax.tree.structure(nnx.state(bn))

  value, y, grads, stats = _train_call(gbn, x)
  value_bn, y_bn, grads_bn, stats_bn = _train_call(bn, x)
  np.testing.assert_allclose(y, y_bn, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(value, value_bn, rtol=1e-5)
  _assert_trees_close(grads, grads_bn, rtol=1e-5, atol=1e-6)
  _assert_trees_close(stats, stats_bn, rtol=1e-6, atol=1e-6)
  gbn.eval(), bn.eval()
  np.testing.assert_allclose(gbn(x), bn(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("num_ghosts", [1, 2, 32])
@pytest.mark.parametrize("stats_update", ["sequential", "mean"])
def test_ghost_batches_equal_nnx_batchnorm_chunk_after_chunk(num_ghosts, stats_update):
  ghost, features = 4, 6
  x = _inputs((num_ghosts * ghost, features), seed=num_ghosts)
  gbn = _perturb(
    GhostBatchNorm(
      features,
      ghost_batch_size=ghost,
      stats_update=stats_update,
      momentum=MOMENTUM,
      rngs=nnx.Rngs(0),
    )
  )
  # The shifted ghost variance is exact: compare with flax's two-pass variance.
  bn = _perturb(
    nnx.BatchNorm(features, momentum=MOMENTUM, use_fast_variance=False, rngs=nnx.Rngs(0))
  )
  old_mean, old_var = bn.mean[...], bn.var[...]
  y = gbn(x)
  chunks = [bn(chunk) for chunk in jnp.split(x, num_ghosts)]
  np.testing.assert_allclose(y, jnp.concatenate(chunks), rtol=1e-5, atol=1e-5)
  if stats_update == "sequential":
    expected_mean, expected_var = bn.mean[...], bn.var[...]
  else:
    ghosts = np.asarray(x).reshape(num_ghosts, ghost, features)
    expected_mean = MOMENTUM * old_mean + (1 - MOMENTUM) * ghosts.mean(axis=1).mean(axis=0)
    expected_var = MOMENTUM * old_var + (1 - MOMENTUM) * ghosts.var(axis=1).mean(axis=0)
  np.testing.assert_allclose(gbn.mean[...], expected_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gbn.var[...], expected_var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stats_update", ["sequential", "mean"])
@pytest.mark.parametrize("ghost_variance", ["shifted", "one_pass"])
def test_equals_the_linen_ghost_batch_norm(stats_update, ghost_variance):
  options = {
    "ghost_batch_size": 4,
    "stats_update": stats_update,
    "ghost_variance": ghost_variance,
    "momentum": MOMENTUM,
  }
  x = _inputs((16, 3, 5), seed=4)
  gbn = _perturb(GhostBatchNorm(5, rngs=nnx.Rngs(0), **options))
  linen = LinenGhostBatchNorm(**options)
  variables = {
    "params": {"scale": gbn.scale[...], "bias": gbn.bias[...]},
    "batch_stats": {"mean": gbn.mean[...], "var": gbn.var[...]},
  }

  def linen_loss(params):
    y, updates = linen.apply(
      {**variables, "params": params}, x, use_running_average=False, mutable=["batch_stats"]
    )
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size), (y, updates)

  (value_l, (y_l, updates_l)), grads_l = jax.value_and_grad(linen_loss, has_aux=True)(
    variables["params"]
  )
  value, y, grads, stats = _train_call(gbn, x)
  np.testing.assert_allclose(y, y_l, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(value, value_l, rtol=1e-6)
  for name in ("scale", "bias"):
    np.testing.assert_allclose(grads[name][...], grads_l[name], rtol=1e-5, atol=1e-6)
  for name in ("mean", "var"):
    np.testing.assert_allclose(stats[name][...], updates_l["batch_stats"][name], rtol=1e-6)


class _TwoLayer(nnx.Module):
  def __init__(self, norm_options, rngs):
    self.dense = nnx.Linear(5, 6, rngs=rngs)
    self.norm = GhostBatchNorm(6, momentum=MOMENTUM, rngs=rngs, **norm_options)
    self.out = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.norm(self.dense(x))))


def _grads_and_stats(model, x):
  def loss_fn(model):
    y = model(x)
    return jnp.mean(y**2), y

  (_, y), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  return y, grads, nnx.state(model, nnx.BatchStat)


@pytest.mark.parametrize("stats_update", ["sequential", "mean"])
def test_four_simulated_devices_equal_one_device(stats_update):
  ghost, num_devices = 4, 4
  x = _inputs((num_devices * 2 * ghost, 5))
  options = {"ghost_batch_size": ghost, "stats_update": stats_update}
  sharded = _TwoLayer({**options, "axis_name": "batch"}, nnx.Rngs(0))
  single = _TwoLayer(options, nnx.Rngs(0))
  graphdef, state = nnx.split(sharded)
  mesh = Mesh(np.array(jax.devices()[:num_devices]), ("batch",))

  def local(state, x):
    model = nnx.merge(graphdef, state)
    y, grads, _ = _grads_and_stats(model, x)
    return y, jax.lax.pmean(grads, "batch"), nnx.state(model)

  y, grads, new_state = jax.jit(
    jax.shard_map(
      local,
      mesh=mesh,
      in_specs=(P(), P("batch")),
      out_specs=(P("batch"), P(), P()),
      check_vma=False,
    )
  )(state, x)
  nnx.update(sharded, new_state)
  y1, grads1, stats1 = _grads_and_stats(single, x)

  # Float32 round-off differs between the sharded and unsharded dots (~1e-5).
  np.testing.assert_allclose(y, y1, rtol=1e-4, atol=1e-5)
  _assert_trees_close(grads, grads1, rtol=1e-4, atol=1e-5)
  _assert_trees_close(nnx.state(sharded, nnx.BatchStat), stats1, rtol=1e-5, atol=1e-6)


def test_eval_uses_running_statistics_at_any_batch_size():
  x = _inputs((32, 5))
  gbn = _perturb(GhostBatchNorm(5, ghost_batch_size=8, momentum=MOMENTUM, rngs=nnx.Rngs(0)))
  for _ in range(3):
    gbn(x)
  gbn.eval()
  mean, var = gbn.mean[...], gbn.var[...]
  for batch in (1, 3, 32):
    expected = (x[:batch] - mean) / np.sqrt(var + 1e-5) * gbn.scale[...] + gbn.bias[...]
    np.testing.assert_allclose(gbn(x[:batch]), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(gbn.mean[...], mean)  # eval leaves the statistics


class _Nested(nnx.Module):
  def __init__(self, rngs):
    self.stem = nnx.Sequential(nnx.Linear(5, 8, rngs=rngs), nnx.BatchNorm(8, rngs=rngs), nnx.relu)
    self.blocks = nnx.List([nnx.BatchNorm(8, rngs=rngs), nnx.BatchNorm(8, rngs=rngs)])
    self.plain = nnx.data([nnx.BatchNorm(8, rngs=rngs)])
    self.head = nnx.Dict({"norm": nnx.BatchNorm(8, rngs=rngs), "out": nnx.Linear(8, 2, rngs=rngs)})

  def __call__(self, x):
    x = self.stem(x)
    for norm in [*self.blocks, *self.plain]:
      x = nnx.relu(norm(x))
    return self.head["out"](self.head["norm"](x))


def test_ghostify_a_nested_model_keeps_its_eval_outputs():
  x = _inputs((16, 5))
  model = _perturb(_Nested(nnx.Rngs(0)))
  model.eval()
  before = model(x)
  variables = [v for _, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable)]
  assert ghostify(model, ghost_batch_size=4) == 5
  norms = [n for _, n in nnx.iter_graph(model) if isinstance(n, nnx.BatchNorm)]
  assert len(norms) == 5 and all(isinstance(n, GhostBatchNorm) for n in norms)
  assert all(n.ghost_batch_size == 4 and n.use_running_average for n in norms)
  # The very same variables: an optimizer built before still holds them.
  after = [v for _, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable)]
  assert len(after) == len(variables) and all(a is b for a, b in zip(after, variables))
  np.testing.assert_array_equal(model(x), before)
  # In training the layers now normalize ghost batches of 4.
  model.train()
  reference = _perturb(_Nested(nnx.Rngs(0)))
  assert not np.allclose(model(x), reference(x), atol=1e-3)


def test_ghostify_refuses_what_it_cannot_change_and_bad_options():
  bn = nnx.BatchNorm(3, momentum=MOMENTUM, rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match=r"bare nnx.BatchNorm cannot replace itself.*GhostBatchNorm"):
    ghostify(bn, 4)
  ghost = GhostBatchNorm(3, ghost_batch_size=4, rngs=nnx.Rngs(0))
  assert ghostify(ghost, 8, stats_update="mean") == 1  # updated in place
  assert ghost.ghost_batch_size == 8 and ghost.stats_update == "mean"
  without = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.relu)
  with pytest.raises(ValueError, match=r"ghostify found no nnx.BatchNorm in the Sequential"):
    ghostify(without, 4)
  linen_model = LinenGhostBatchNorm(ghost_batch_size=4)
  with pytest.raises(TypeError, match=r"linen module GhostBatchNorm.*bigbatch_jax.GhostBatchNorm"):
    ghostify(linen_model, 4)
  with pytest.raises(TypeError, match=r"needs a flax.nnx.Module, got dict"):
    ghostify({"norm": bn}, 4)
  with pytest.raises(ValueError, match=r"ghost_batch_size=1 must be an integer >= 2"):
    ghostify(nnx.Sequential(bn), 1)
  with pytest.raises(ValueError, match=r"unknown stats_update='ema'"):
    GhostBatchNorm(3, stats_update="ema", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"ghost_batch_size=8 does not divide the local batch of 12"):
    GhostBatchNorm(3, ghost_batch_size=8, rngs=nnx.Rngs(0))(jnp.ones((12, 3)))


def test_the_linen_class_given_nnx_arguments_points_to_the_nnx_class():
  for args, kwargs in [((512,), {"ghost_batch_size": 4}), ((), {"rngs": nnx.Rngs(0)})]:
    with pytest.raises(TypeError, match=r"For Flax NNX use bigbatch_jax.nnx.GhostBatchNorm"):
      LinenGhostBatchNorm(*args, **kwargs)
  assert LinenGhostBatchNorm(True, ghost_batch_size=4).use_running_average  # linen's positional


def test_the_nnx_class_lists_every_argument_of_nnx_batchnorm():
  import inspect

  ours = inspect.signature(GhostBatchNorm.__init__).parameters
  theirs = inspect.signature(nnx.BatchNorm.__init__).parameters
  assert all(p.kind is not p.VAR_KEYWORD for p in ours.values()), "no **kwargs"
  assert set(theirs) <= set(ours), sorted(set(theirs) - set(ours))
  for name, p in theirs.items():
    if name not in ("self", "num_features", "promote_dtype", "bias_metadata", "scale_metadata"):
      assert ours[name].default == p.default, name  # nnx.BatchNorm's defaults
  norm = GhostBatchNorm(3, momentum=0.5, use_bias=False, axis_name="batch", rngs=nnx.Rngs(0))
  assert (norm.momentum, norm.bias, norm.axis_name) == (0.5, None, "batch")


class _Classifier(nnx.Module):
  def __init__(self, rngs):
    self.layers = nnx.Sequential(
      nnx.Linear(5, 32, rngs=rngs),
      GhostBatchNorm(32, ghost_batch_size=8, momentum=MOMENTUM, rngs=rngs),
      nnx.relu,
      nnx.Linear(32, 3, rngs=rngs),
    )

  def __call__(self, x):
    return self.layers(x)


def test_bigbatch_transforms_train_an_nnx_model_under_nnx_optimizer():
  batch, base = 64, 16
  x = jax.random.normal(jax.random.key(0), (batch, 5))
  labels = jnp.argmax(x[:, :3], axis=-1)
  model = _Classifier(nnx.Rngs(0))
  tx = optax.chain(
    transforms.clip_by_global_norm_during(5.0, steps=3),
    transforms.add_decaying_noise(jax.random.key(1), alpha=1e-5),
    optax.add_decayed_weights(5e-4),
    optax.sgd(0.1, momentum=0.9),
    transforms.scale_by_batch_size(batch, base, "sqrt"),
    transforms.scale_by_distance_drops([1e6], 0.1),
  )
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  variance = noise.matched_noise_variance(batch, base)

  @nnx.jit
  def step(model, optimizer, key):
    weights = noise.multiplicative_noise_weights(key, batch, variance)

    def loss_fn(model):
      losses = optax.softmax_cross_entropy_with_integer_labels(model(x), labels)
      return jnp.mean(weights * losses)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer, jax.random.key(100 + i))) for i in range(30)]
  assert losses[-1] < 0.5 * losses[0], losses
  counts = [
    s.count
    for s in jax.tree.leaves(
      optimizer.opt_state, is_leaf=lambda s: isinstance(s, optax.AddNoiseState)
    )
    if isinstance(s, optax.AddNoiseState)
  ]
  assert [int(c[...] if hasattr(c, "__getitem__") else c) for c in counts] == [30]
  assert int(optimizer.step[...]) == 30
  # The running statistics moved with training.
  assert not np.allclose(model.layers.layers[1].mean[...], 0.0)
