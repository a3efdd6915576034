"""The optimizer chain the plan builds, against updates computed by hand, step by step.

``make_optimizer`` promises clip -> white noise -> weight decay -> momentum
SGD on the base schedule -> scale by (B / B_base)**p. On a tiny example where
each of these matters (gradients above the clip norm, noise large against the
clipped gradient, weights large against the gradient, a learning-rate drop or
a batch-size change inside the run so that scaling before or after momentum
differs), the chain must give the hand-computed parameters, and every order
obtained by swapping two neighbouring parts must give different ones (so the
test can tell the orders apart).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigbatch_jax import training, transforms
from tests.test_training import tiny_config

ORDER = ("clip", "noise", "decay", "momentum", "lr", "scale")
NOISE = (0.5, 0.55)  # (alpha, gamma): noise of norm ~1, like the clipped gradient
CLIP_NORM, CLIP_STEPS, WEIGHT_DECAY, MOMENTUM = 1.0, 3, 0.2, 0.9
NUM_STEPS = 5


def _plan(variant):
  # 256 examples at batch 64: 4 updates per epoch, the drop (or the growth) at update 2.
  # grow_lr_follows_batch: the growing batch changes the scale mid-run (Smith
  # et al.'s variant with lr and batch growing), so its place in the chain shows.
  config = tiny_config(
    variant,
    grad_clip_norm=CLIP_NORM,
    grad_clip_steps=CLIP_STEPS,
    batch_growth_factor=2.0,
    grow_lr_follows_batch=True,
  )
  config.regime.weight_decay = WEIGHT_DECAY
  config.regime.momentum = MOMENTUM
  config.regime.drop_epochs = (0.5,)
  return training.make_plan(config, num_train=256, num_devices=1)


def _problem():
  w0 = {"a": jnp.array([2.0, -3.0, 1.5]), "b": jnp.array([[4.0, -1.0]])}
  rng = np.random.default_rng(0)
  draw = lambda w: jnp.asarray(rng.normal(size=w.shape) * 3.0, jnp.float32)  # noqa: E731
  return w0, [jax.tree.map(draw, w0) for _ in range(NUM_STEPS)]


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _by_hand(order, w0, grads, noises, lr, scale):
  """Parameters after each update, applying the parts in ``order`` (float64)."""
  w, trace, out = _flat(w0), None, []
  for t, g in enumerate(grads):
    u = _flat(g)
    for part in order:
      if part == "clip" and t < CLIP_STEPS:
        u = u * min(1.0, CLIP_NORM / np.linalg.norm(u))
      elif part == "noise":
        u = u + noises[t]
      elif part == "decay":
        u = u + WEIGHT_DECAY * w
      elif part == "momentum":
        trace = u if trace is None else MOMENTUM * trace + u
        u = trace
      elif part == "lr":
        u = -lr[t] * u
      elif part == "scale":
        u = scale[t] * u
    w = w + u
    out.append(w)
  return np.stack(out)


def _moved(part, before):
  order = [p for p in ORDER if p != part]
  order.insert(order.index(before), part)
  return tuple(order)


def _other_orders(changing):
  """The orders a mistake could give: noise or weight decay before clipping, weight
  decay after momentum, the changing factor (lr or scale) before momentum."""
  return [
    _moved("noise", "clip"),
    _moved("decay", "clip"),
    _moved("decay", "lr"),
    _moved(changing, "momentum"),
  ]


@pytest.mark.parametrize(
  "variant, lr, scale, changing",
  [
    # The regime drops the rate x0.1 at update 2; sqrt scaling: x2.
    ("lb+lr+white+clip", [0.05, 0.05, 0.005, 0.005, 0.005], [2.0] * 5, "lr"),
    # The batch grows 64 -> 128 at update 2 instead; linear scaling: x4, then x8.
    ("lb+linear+white+clip+grow", [0.05] * 5, [4.0, 4.0, 8.0, 8.0, 8.0], "scale"),
  ],
)
def test_chain_is_clip_noise_decay_momentum_lr_scale(variant, lr, scale, changing):
  plan = _plan(variant)
  key = jax.random.key(7)
  tx = training.make_optimizer(plan, key, white_noise=NOISE)
  w0, grads = _problem()

  # The noise the chain adds at each update: the white-noise transform alone,
  # from the same key, on zero updates.
  noise_tx = transforms.add_decaying_noise(key, *NOISE)
  noise_state, noises = noise_tx.init(w0), []
  for _ in grads:
    n, noise_state = noise_tx.update(jax.tree.map(jnp.zeros_like, w0), noise_state)
    noises.append(_flat(n))

  update = jax.jit(tx.update)
  state, w, got = tx.init(w0), w0, []
  for g in grads:
    u, state = update(g, state, w)
    w = jax.tree.map(jnp.add, w, u)
    got.append(_flat(w))
  got = np.stack(got)

  expected = _by_hand(ORDER, w0, grads, noises, lr, scale)
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)
  # The example tells the other orders apart. Noise and weight decay are both
  # added, lr and scale both multiply: within each pair the order cannot
  # matter; only the factor that changes during the run shows whether it comes
  # before or after momentum.
  for order in _other_orders(changing):
    other = _by_hand(order, w0, grads, noises, lr, scale)
    assert np.max(np.abs(other - expected)) > 1e-2, order
