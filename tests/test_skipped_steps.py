"""Skipped steps (nonfinite_policy="skip") keep one clock: the optimizer follows state.step.

A skipped step consumed its batch; the schedule, the clipping window and the
white noise's decay advance with it while the accumulators (momentum) stay
(``bigbatch_jax.training.step.opt_state_after_skip`` says why). These tests
inject NaN batches at chosen steps into the real step built from the plan and
measure the learning rate each applied update used. That the momentum buffer
stays on a skip is checked in tests/test_training.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigbatch_jax import models, training
from bigbatch_jax.training import parallel
from bigbatch_jax.training import spec as spec_lib
from bigbatch_jax.training import step as step_lib
from tests import tiny_run
from tests.test_training import tiny_config

CLIP_NORM, CLIP_STEPS = 0.05, 6
NAN_STEPS = (2, 3, 4)  # three skips before the clip window ends (6) and the drop (8)


def _skip_setup():
  """The real step of lb+linear+white+clip, momentum 0, so an update is -lr * clip(g)."""
  config = tiny_config(
    "lb+linear+white+clip",
    nonfinite_policy="skip",
    grad_clip_norm=CLIP_NORM,
    grad_clip_steps=CLIP_STEPS,
  )
  config.regime.momentum = 0.0
  config.regime.weight_decay = 0.0
  spec = spec_lib.resolve(config, num_train=512, num_devices=1)
  plan = spec.plan
  assert plan.regime.drop_steps(512) == (8,) and plan.lr_scale == 4.0
  model = models.get_model(
    "f1", 4, norm=training.norm_layer(spec, step_lib.AXIS), hidden=32, depth=2
  )
  # White noise of variance 0: its counter and key are in the state, its draw adds nothing.
  tx = training.make_optimizer(plan, jax.random.key(1), white_noise=(0.0, 0.55))
  step, state, mesh = tiny_run.sharded_step(
    plan, model, tx, jnp.zeros((1, 16)), skip_nonfinite=True
  )
  return step, jax.device_put(state, parallel.replicated(mesh)), mesh


def _batch(step, nan):
  rng = np.random.default_rng(step)
  batch = {"x": rng.normal(size=(64, 16)).astype(np.float32), "y": rng.integers(0, 4, 64)}
  batch["y"] = batch["y"].astype(np.int32)
  if nan:
    batch["x"][5, 3] = np.nan
  return batch


def _counters(opt_state):
  """The optimizer's integer leaves: every schedule, window and noise count."""
  return [int(x) for x in jax.tree.leaves(opt_state) if jnp.issubdtype(x.dtype, jnp.integer)]


def _norm(tree):
  return float(np.sqrt(sum(np.sum(np.square(x, dtype=np.float64)) for x in jax.tree.leaves(tree))))


def test_after_skips_the_applied_and_logged_learning_rates_are_one_schedule():
  step, state, mesh = _skip_setup()
  num_counters = len(_counters(state.opt_state))
  assert num_counters >= 4  # clip window, white noise, lr schedule, batch-size scale
  applied, logged = {}, {}
  for s in range(11):
    before = jax.device_get(state.params)
    state, metrics = step(state, parallel.put_batch(_batch(s, s in NAN_STEPS), mesh))
    metrics = jax.device_get(metrics)
    delta = _norm(jax.tree.map(np.subtract, jax.device_get(state.params), before))
    # Every counter of the optimizer is on the data clock, skipped or not.
    assert _counters(state.opt_state) == [int(state.step)] * num_counters, s
    assert int(metrics["skipped_steps"]) == sum(t <= s for t in NAN_STEPS)
    if s in NAN_STEPS:
      assert delta == 0.0 and not np.isfinite(metrics["loss"])
      continue
    grad_norm = float(metrics["grad_norm"])
    clipped = min(grad_norm, CLIP_NORM) if s < CLIP_STEPS else grad_norm
    assert grad_norm > CLIP_NORM  # so the clip window shows in the update
    applied[s], logged[s] = delta / clipped, float(metrics["lr"])
  # 0.05 * (64 / 16) before the drop at update 8, 0.1 times that after:
  # the skipped steps 2-4 do not delay the drop, nor the end of clipping at 6.
  expected = {s: 0.2 if s < 8 else 0.02 for s in applied}
  for s in applied:
    assert applied[s] == pytest.approx(logged[s], rel=1e-3), (s, applied[s], logged[s])
    assert logged[s] == pytest.approx(expected[s], rel=1e-6)
