"""The large-batch recipes against their closed forms."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigbatch_jax import regimes, training
from bigbatch_jax.training import optimizer, variants
from bigbatch_jax.training import plan as plan_lib
from tests.test_training import tiny_config

F1 = regimes.Regime(
  lr=0.1, momentum=0.9, weight_decay=1e-4, epochs=50, drop_epochs=(10, 20, 30), batch_size=128
)


def test_gradual_warmup_ramps_from_the_base_to_the_scaled_lr():
  # Goyal et al. 2.2: lr(t) = lr (1 + (k - 1) t / T) for t <= T, then k lr (the regime).
  scale, warmup = 32.0, 5 * 15  # five epochs of F1 at 4096 on MNIST (~15 updates each)
  factor = jax.jit(regimes.gradual_warmup(scale, warmup))
  base = F1.schedule(1000.0)  # a regime schedule whose first drop (10,000) is after the warmup
  for t in (0, 1, 10, 37, 74, 75, 76, 500):
    expected = 0.1 * (1 + (scale - 1) * min(t, warmup) / warmup)
    np.testing.assert_allclose(float(base(t) * scale * factor(t)), expected, rtol=1e-6)


def test_gradual_warmup_off_and_bad_input():
  assert float(regimes.gradual_warmup(8.0, 0)(0)) == 1.0
  with pytest.raises(ValueError, match="scale must be > 0"):
    regimes.gradual_warmup(0.0, 10)
  with pytest.raises(ValueError, match="whole number"):
    regimes.gradual_warmup(2.0, 2.5)


def test_lars_trust_ratio_on_a_two_layer_example_by_hand():
  regime = regimes.Regime(lr=1.0, momentum=0.9, weight_decay=0.01, epochs=1, batch_size=8)
  params = {
    "layer1": jnp.asarray([[3.0, 4.0]]),
    "layer2": jnp.asarray([[1.0, 2.0, 2.0]]),
    "bias": jnp.asarray([1.0, -2.0]),
  }
  grads = {
    "layer1": jnp.asarray([[0.0, 1.0]]),
    "layer2": jnp.asarray([[0.5, 0.0, 0.0]]),
    "bias": jnp.asarray([0.5, 0.25]),
  }
  lr, eta = 0.5, 0.001
  tx = regimes.lars_for_regime(regime, lr, trust_coefficient=eta)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  # Layer 1: ||w|| = 5, d = g + 0.01 w = (0.03, 1.04), ||d|| = sqrt(0.03^2 + 1.04^2).
  d1 = np.asarray([[0.03, 1.04]])
  ratio1 = eta * 5.0 / np.sqrt(0.03**2 + 1.04**2)
  # Layer 2: ||w|| = 3, d = (0.51, 0.02, 0.02).
  d2 = np.asarray([[0.51, 0.02, 0.02]])
  ratio2 = eta * 3.0 / np.linalg.norm(d2)
  np.testing.assert_allclose(updates["layer1"], -lr * ratio1 * d1, rtol=1e-5)
  np.testing.assert_allclose(updates["layer2"], -lr * ratio2 * d2, rtol=1e-5)
  # A bias (1-D) gets neither the trust ratio nor the weight decay: lr * g.
  np.testing.assert_allclose(updates["bias"], -lr * np.asarray([0.5, 0.25]), rtol=1e-6)
  assert ratio1 != pytest.approx(ratio2)  # a per-layer, not a global, ratio
  # Second step: momentum m = 0.9 on the lr-scaled steps (Algorithm 1's v).
  updates2, _ = jax.jit(tx.update)(grads, state, params)
  np.testing.assert_allclose(updates2["layer1"], 1.9 * updates["layer1"], rtol=1e-5)


def test_lamb_maps_momentum_and_decoupled_weight_decay():
  regime = regimes.Regime(lr=1.0, momentum=0.8, weight_decay=0.1, epochs=1, batch_size=8)
  params = {"a": jnp.asarray([[3.0, 4.0]]), "bias": jnp.asarray([3.0, 4.0])}
  grads = {"a": jnp.asarray([[2.0, -1.0]]), "bias": jnp.asarray([2.0, -1.0])}
  tx = regimes.lamb_for_regime(regime, 0.01, eps=0.0)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  # The first bias-corrected Adam step is sign(g); LAMB scales r + lambda w by
  # ||w|| / ||r + lambda w||.
  r = np.sign([[2.0, -1.0]]) + 0.1 * np.asarray([[3.0, 4.0]])
  expected = -0.01 * 5.0 / np.linalg.norm(r) * r
  np.testing.assert_allclose(updates["a"], expected, rtol=1e-5)
  # A bias (1-D) takes the plain Adam step: no weight decay, no trust ratio.
  np.testing.assert_allclose(updates["bias"], -0.01 * np.sign([2.0, -1.0]), rtol=1e-5)
  # b1 is the regime's momentum: a second, opposite gradient moves m by 0.8 / 0.2.
  state = tx.init(params)
  _, state = tx.update(grads, state, params)
  mu = jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, optax.ScaleByAdamState))[0].mu["a"]
  np.testing.assert_allclose(mu, 0.2 * np.asarray([[2.0, -1.0]]), rtol=1e-6)


# The optax optimizers with the biases ("b", 1-D) out of the weight decay and trust ratio.
KERNELS = {"w": True, "b": False}
LARS_MASKS = {"weight_decay_mask": KERNELS, "trust_ratio_mask": KERNELS}


def masked_lamb(lr, b1, weight_decay):
  """optax.lamb with its weight decay masked and, for the bias, the trust ratio's update
  replaced by the plain Adam step (optax.lamb(mask=...) masks only the weight decay)."""
  with_ratio = optax.lamb(lr, b1=b1, weight_decay=weight_decay, mask=KERNELS)
  plain = optax.adam(lr, b1=b1, eps=1e-6)
  return optax.multi_transform({"kernel": with_ratio, "bias": plain}, {"w": "kernel", "b": "bias"})


def _run_chain(tx, steps=3):
  params = {"w": jnp.asarray([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.asarray([0.1, 0.2])}
  grads = {"w": jnp.asarray([[0.3, 0.1], [-0.2, 0.4]]), "b": jnp.asarray([1.0, -1.0])}
  state, out = tx.init(params), []
  for _ in range(steps):
    updates, state = jax.jit(tx.update)(grads, state, params)
    out.append(updates)
  return out


@pytest.mark.parametrize(
  ("optimizer", "reference"),
  [
    ("sgd", lambda lr: optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(lr, momentum=0.9))),
    ("lars", lambda lr: optax.lars(lr, weight_decay=1e-4, momentum=0.9, **LARS_MASKS)),
    ("lamb", lambda lr: masked_lamb(lr, b1=0.9, weight_decay=1e-4)),
  ],
)
def test_regime_optimizer_parts_are_the_mapped_optax_optimizers(optimizer, reference):
  schedule = F1.schedule(1.0)  # drops at updates 10, 20, 30
  ours = optax.chain(*regimes.regime_optimizer_parts(F1, schedule, optimizer))
  for a, b in zip(_run_chain(ours), _run_chain(reference(schedule)), strict=True):
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6), a, b)
  with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
    regimes.regime_optimizer_parts(F1, 0.1, "adam")


@pytest.mark.parametrize(
  ("name", "warmup", "optimizer", "lr_rule"),
  [
    ("lb+linear+warmup", True, "sgd", "linear"),
    ("lb+lars", False, "lars", "none"),
    ("sb+lamb", False, "lamb", "none"),
    ("lb+lr+gbn+grow", False, "sgd", "sqrt"),
  ],
)
def test_recipe_variant_parts(name, warmup, optimizer, lr_rule):
  variant = variants.parse_variant(name)
  assert (variant.warmup, variant.optimizer, variant.lr_rule) == (warmup, optimizer, lr_rule)


@pytest.mark.parametrize(
  ("name", "message"),
  [
    ("lb+lars+lamb", "'lars' and 'lamb'"),
    ("lb+warmup", "add a scaling rule"),
    ("sb+linear+warmup", "no effect at the base batch size"),
  ],
)
def test_recipe_variant_parts_reject_contradictions(name, message):
  with pytest.raises(ValueError, match=message):
    variants.parse_variant(name)


# --- the recipes in the training system -----------------------------------------


def test_warmup_run_logs_goyals_ramp(tmp_path):
  config = tiny_config("lb+linear+warmup", log_every_steps=1, warmup_epochs=1.0)
  plan = plan_lib.make_plan(config, num_train=512, num_devices=1)
  assert plan.warmup_steps == 8 and plan.lr_scale == pytest.approx(4.0)  # 64 / 16
  training.train_and_evaluate(config, str(tmp_path))
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
  # Record s holds update s - 1: 0.05 (1 + 3 t / 8) up to t = 8, where the
  # regime's drop (epoch 1 = update 8) takes over: 0.2 * 0.1.
  for t in range(8):
    assert lrs[t + 1] == pytest.approx(0.05 * (1 + 3 * t / 8), rel=1e-5)
  assert lrs[9] == pytest.approx(0.02, rel=1e-5) and lrs[16] == pytest.approx(0.02, rel=1e-5)


def test_warmup_scales_the_optimizers_steps():
  config = tiny_config("lb+linear+warmup", warmup_epochs=1.0, **{"regime.momentum": 0.0})
  plan = plan_lib.make_plan(config, num_train=512, num_devices=1)
  params = {"w": jnp.asarray([1.0, -2.0])}
  grads = {"w": jnp.asarray([0.5, 0.25])}
  tx = optimizer.make_optimizer(plan, jax.random.key(0))
  state, update = tx.init(params), jax.jit(tx.update)
  for t in range(10):
    updates, state = update(grads, state, params)
    lr = 0.05 * (1 + 3 * min(t, 8) / 8) * (0.1 if t >= 8 else 1.0)  # drop at update 8
    np.testing.assert_allclose(updates["w"], -lr * (grads["w"] + 1e-4 * params["w"]), rtol=1e-5)


@pytest.mark.parametrize(
  ("variant", "reference"),
  [
    (
      "lb+lars",
      lambda lr: optax.lars(lr, weight_decay=1e-4, trust_coefficient=0.01, **LARS_MASKS),
    ),
    ("lb+lamb", lambda lr: masked_lamb(lr, b1=0.9, weight_decay=1e-4)),
  ],
)
def test_lars_and_lamb_variants_build_the_mapped_optimizer(variant, reference):
  config = tiny_config(variant, lars_trust_coefficient=0.01)
  plan = plan_lib.make_plan(config, num_train=512, num_devices=1)
  ours = optimizer.make_optimizer(plan, jax.random.key(0))
  theirs = optax.chain(reference(plan.regime.schedule(plan.steps_per_epoch)))
  for a, b in zip(_run_chain(ours, steps=10), _run_chain(theirs, steps=10), strict=True):
    # "lb": no lr scaling; LAMB's masked chain rounds in another order than the reference.
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6), a, b)


@pytest.mark.slow  # two tiny runs, ~25 s
@pytest.mark.parametrize("variant", ["lb+lars", "lb+lamb"])
def test_lars_and_lamb_variants_train(variant, tmp_path):
  summary = training.train_and_evaluate(tiny_config(variant), str(tmp_path))
  assert summary["updates"] == 16 and 0 <= summary["test_accuracy"] <= 1
  assert summary["weight_distance"] > 0
