"""The Optax transforms against closed forms, under jit, chains and shard_map."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import bigbatch_jax as bb

PARAMS = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
GRADS = {"w": jnp.full((3, 2), 0.5), "b": jnp.full(2, -2.0)}


def _apply(tx, grads=GRADS, params=PARAMS, steps=1):
  state = tx.init(params)
  update = jax.jit(tx.update)
  outputs = []
  for _ in range(steps):
    updates, state = update(grads, state, params)
    outputs.append(updates)
  return outputs, state


@pytest.mark.parametrize(
  ("rule", "exponent"), [("sqrt", 0.5), ("linear", 1.0), ("none", 0.0), (0.25, 0.25)]
)
def test_scale_by_batch_size_multiplies_by_ratio_to_the_power(rule, exponent):
  tx = bb.scale_by_batch_size(4096, 128, rule)
  [updates], _ = _apply(tx)
  factor = 32**exponent
  jax.tree.map(lambda u, g: np.testing.assert_allclose(u, g * factor, rtol=1e-6), updates, GRADS)


def test_scale_by_batch_size_follows_a_batch_size_schedule():
  # Batch doubles every 2 updates: 128, 128, 256, 256, 512.
  schedule = lambda count: 128 * 2 ** (count // 2)  # noqa: E731
  tx = bb.scale_by_batch_size(schedule, 128, "linear")
  outputs, _ = _apply(tx, steps=5)
  factors = [float(u["b"][0] / GRADS["b"][0]) for u in outputs]
  np.testing.assert_allclose(factors, [1, 1, 2, 2, 4], rtol=1e-6)


def test_sqrt_scaling_in_an_sgd_chain_equals_the_scaled_learning_rate():
  chained = optax.chain(optax.sgd(0.1, momentum=0.9), bb.scale_by_batch_size(512, 128))
  direct = optax.sgd(0.1 * 2.0, momentum=0.9)
  a, _ = _apply(chained, steps=3)
  b, _ = _apply(direct, steps=3)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), a, b)


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    ({"batch_size": 4096, "base_batch_size": 128, "rule": "cubic"}, "unknown learning-rate rule"),
    ({"batch_size": 0, "base_batch_size": 128}, "batch_size must be a positive"),
    ({"batch_size": 4096, "base_batch_size": -1}, "base_batch_size must be a positive"),
  ],
)
def test_scale_by_batch_size_rejects_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    bb.scale_by_batch_size(**kwargs)


def test_decaying_noise_std_follows_the_schedule():
  alpha, gamma, steps = 1e-2, 0.55, 60
  params = jnp.zeros(200_000)
  tx = bb.add_decaying_noise(jax.random.key(0), alpha, gamma)

  def step(state, _):
    updates, state = tx.update(jnp.zeros_like(params), state)
    return state, jnp.std(updates)

  _, stds = jax.jit(lambda s: jax.lax.scan(step, s, None, length=steps))(tx.init(params))
  t = np.arange(steps)
  expected = np.sqrt(alpha / (1 + t) ** gamma)
  # 2e5 samples: the relative standard error of a std estimate is ~0.16%.
  np.testing.assert_allclose(stds, expected, rtol=0.01)


def test_decaying_noise_defaults_are_jaiswal_and_need_a_key():
  tx = bb.add_decaying_noise(jax.random.key(1))
  [updates], _ = _apply(tx, grads={"w": jnp.zeros(100_000)}, params={"w": jnp.zeros(100_000)})
  np.testing.assert_allclose(jnp.std(updates["w"]), np.sqrt(1e-5), rtol=0.02)
  with pytest.raises(TypeError, match=r"jax\.random\.key"):
    bb.add_decaying_noise(0)
  with pytest.raises(ValueError, match="alpha must be >= 0"):
    bb.add_decaying_noise(jax.random.key(0), alpha=-1.0)


def test_decaying_noise_draws_independent_noise_for_every_leaf():
  # One flat draw is split into the leaves: each leaf must get its own slice
  # (right shape and dtype, the scheduled std) and no two leaves the same numbers.
  params = {"a": jnp.zeros(60_000), "b": jnp.zeros((300, 200)), "c": jnp.zeros(7, jnp.bfloat16)}
  tx = bb.add_decaying_noise(jax.random.key(2), alpha=1.0)
  [updates], state = _apply(tx, grads=jax.tree.map(jnp.zeros_like, params), params=params)
  for name in ("a", "b"):
    np.testing.assert_allclose(jnp.std(updates[name]), 1.0, rtol=0.02)
  assert updates["c"].dtype == jnp.bfloat16 and updates["c"].shape == (7,)
  a, b = np.asarray(updates["a"]), np.asarray(updates["b"]).ravel()
  assert abs(np.corrcoef(a, b)[0, 1]) < 0.02
  assert int(state.count) == 1


@pytest.mark.parametrize("check_vma", [False, True])
def test_decaying_noise_is_identical_on_every_replica(check_vma):
  mesh = Mesh(np.array(jax.devices()), ("batch",))
  params = {"w": jnp.zeros(64)}
  tx = optax.chain(bb.add_decaying_noise(jax.random.key(3), alpha=1.0), optax.sgd(1.0))
  state = tx.init(params)
  local_grads = jnp.arange(4 * 64, dtype=jnp.float32).reshape(4, 64)

  def replica(grads, state):
    # The optimizer runs on the cross-device mean with a replicated state.
    grads = {"w": jax.lax.pmean(grads[0], "batch")}
    updates, state = tx.update(grads, state, params)
    return updates["w"][None], state

  fn = jax.shard_map(
    replica,
    mesh=mesh,
    in_specs=(P("batch"), P()),
    out_specs=(P("batch"), P()),
    check_vma=check_vma,
  )
  per_replica, _ = jax.jit(fn)(local_grads, state)
  assert per_replica.shape == (4, 64)
  for r in range(1, 4):
    np.testing.assert_array_equal(per_replica[r], per_replica[0])
  # The noise is really there: the update is not the plain mean gradient step.
  assert np.max(np.abs(per_replica[0] + local_grads.mean(0))) > 0.1


def test_clip_during_clips_only_the_first_steps():
  max_norm, steps = 0.1, 3
  tx = bb.clip_by_global_norm_during(max_norm, steps)
  outputs, _ = _apply(tx, steps=6)
  norms = [float(optax.tree.norm(u)) for u in outputs]
  raw = float(optax.tree.norm(GRADS))
  np.testing.assert_allclose(norms, [max_norm] * steps + [raw] * 3, rtol=1e-5)


def test_clip_during_rejects_bad_arguments():
  with pytest.raises(ValueError, match="max_norm must be > 0"):
    bb.clip_by_global_norm_during(0.0, 10)
  with pytest.raises(ValueError, match="steps must be a non-negative whole number"):
    bb.clip_by_global_norm_during(5.0, -1)


def test_distance_drops_scale_once_each_target_is_reached():
  # Unit steps along one axis: ||w - w0|| = 0, 1, 2, ... before each update.
  tx = optax.chain(optax.sgd(1.0), bb.scale_by_distance_drops((1.5, 3.5), factor=0.5))
  params = jnp.zeros(1)
  state = tx.init(params)
  update = jax.jit(tx.update)
  scales = []
  for _ in range(7):
    distance = float(jnp.abs(params[0]))
    updates, state = update(
      jnp.array([-1.0 / 0.5 ** sum(distance >= t for t in (1.5, 3.5))]), state, params
    )
    scales.append(float(updates[0]))
    params = params + updates
  # Gradients were pre-divided by the expected scale: every update is exactly 1.
  np.testing.assert_allclose(scales, 1.0, rtol=1e-6)
  assert int(state[1].num_drops) == 2


def test_distance_drops_never_undo_a_drop_and_check_arguments():
  tx = bb.scale_by_distance_drops((1.0,), factor=0.1)
  state = tx.init(jnp.zeros(1))
  _, state = tx.update(jnp.ones(1), state, jnp.full(1, 2.0))  # beyond the target
  updates, state = tx.update(jnp.ones(1), state, jnp.zeros(1))  # back at w0
  np.testing.assert_allclose(updates, 0.1, rtol=1e-6)
  with pytest.raises(ValueError, match="needs params"):
    tx.update(jnp.ones(1), state)
  with pytest.raises(ValueError, match="positive and increasing"):
    bb.scale_by_distance_drops((3.0, 2.0))


TRANSFORMS = {
  "scale_by_batch_size": lambda: bb.scale_by_batch_size(256, 128, "sqrt"),
  "scale_by_batch_size_schedule": lambda: bb.scale_by_batch_size(lambda c: 128 + c, 128),
  "add_decaying_noise": lambda: bb.add_decaying_noise(jax.random.key(0)),
  "clip_by_global_norm_during": lambda: bb.clip_by_global_norm_during(1.0, 2),
  "scale_by_distance_drops": lambda: bb.scale_by_distance_drops((0.01, 0.05)),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_contract_every_transform_in_a_jitted_chain(name):
  tx = optax.chain(
    TRANSFORMS[name](), optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9)
  )
  outputs, state = _apply(tx, steps=4)
  for updates in outputs:
    assert jax.tree.structure(updates) == jax.tree.structure(PARAMS)
    jax.tree.map(
      lambda u, p: (u.shape, u.dtype) == (p.shape, p.dtype) or pytest.fail(name), updates, PARAMS
    )
    assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates))
  numeric = [
    leaf
    for leaf in jax.tree.leaves(state)
    if not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
  ]
  assert all(np.all(np.isfinite(leaf)) for leaf in numeric)


@pytest.mark.parametrize(
  ("factory", "kwargs", "static"),
  [
    (bb.scale_by_batch_size, {"batch_size": 512, "base_batch_size": 128, "rule": "sqrt"}, ()),
    (bb.clip_by_global_norm_during, {"max_norm": 0.1, "steps": 2}, ()),
    (bb.add_decaying_noise, {"key": jax.random.key(0), "alpha": 1e-4, "gamma": 0.55}, ("key",)),
  ],
)
def test_contract_inject_hyperparams_matches_the_plain_transform(factory, kwargs, static):
  injected = optax.inject_hyperparams(factory, static_args=static)(**kwargs)
  plain = factory(**kwargs)
  a, state = _apply(injected, steps=3)
  b, _ = _apply(plain, steps=3)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), a, b)
  # The hyperparameters are exposed for logging and for changing on the fly.
  assert set(state.hyperparams) >= {k for k in kwargs if k not in static and k != "rule"}
