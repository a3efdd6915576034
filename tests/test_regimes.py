"""Regimes in epochs and their adaptation to large batches (bigBatch F1 regime)."""

import dataclasses

import jax
import numpy as np
import pytest

from bigbatch_jax import Regime, adapt_regime, epochs_to_steps, regimes, training

F1 = Regime(
  lr=0.1, momentum=0.9, weight_decay=1e-4, epochs=50, drop_epochs=(10, 20, 30), batch_size=128
)
MNIST_TRAIN = 60_000


@pytest.mark.parametrize(
  ("rule", "lr"), [("sqrt", 0.1 * np.sqrt(32)), ("linear", 3.2), ("none", 0.1)]
)
@pytest.mark.parametrize("adaptation", [True, False])
def test_adapt_f1_regime_to_4096(rule, lr, adaptation):
  large = adapt_regime(F1, 4096, lr_rule=rule, regime_adaptation=adaptation)
  np.testing.assert_allclose(large.lr, lr, rtol=1e-12)
  assert large.batch_size == 4096
  assert (large.momentum, large.weight_decay, large.drop_factor) == (0.9, 1e-4, 0.1)
  if adaptation:
    assert large.epochs == 1600 and large.drop_epochs == (320, 640, 960)
    # Same number of updates as the small-batch regime, at every boundary.
    assert large.num_steps(MNIST_TRAIN) == F1.num_steps(MNIST_TRAIN) == 23438
    assert large.drop_steps(MNIST_TRAIN) == F1.drop_steps(MNIST_TRAIN) == (4688, 9375, 14062)
  else:
    assert large.epochs == 50 and large.drop_epochs == (10, 20, 30)
    # r = 32 times fewer updates.
    assert large.num_steps(MNIST_TRAIN) == 732
    assert F1.num_steps(MNIST_TRAIN) / large.num_steps(MNIST_TRAIN) == pytest.approx(32, rel=1e-3)


def test_schedule_drops_by_the_factor_at_each_boundary():
  schedule = F1.schedule(F1.steps_per_epoch(MNIST_TRAIN))
  steps = [0, 4687, 4688, 9374, 9375, 14061, 14062, 23437]
  expected = [0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001]
  np.testing.assert_allclose([float(schedule(s)) for s in steps], expected, rtol=1e-5)


def test_adapted_schedule_keeps_the_drop_steps_and_scales_the_rate():
  large = adapt_regime(F1, 4096)
  schedule = large.schedule(large.steps_per_epoch(MNIST_TRAIN))
  np.testing.assert_allclose(float(schedule(4687)), large.lr, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(4688)), large.lr * 0.1, rtol=1e-6)


def test_epochs_to_steps_rounds_once():
  assert epochs_to_steps(1, 60_000, 128) == 469  # 468.75
  assert epochs_to_steps(0.5, 1000, 100) == 5
  with pytest.raises(ValueError, match="num_examples and batch_size must be positive"):
    epochs_to_steps(1, 1000, 0)


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    ({"lr": 0.0}, "Regime.lr must be > 0"),
    ({"momentum": 1.0}, r"Regime.momentum must be in \[0, 1\)"),
    ({"epochs": 0}, "Regime.epochs must be > 0"),
    ({"batch_size": 0}, "Regime.batch_size must be a positive integer"),
    ({"drop_epochs": (20, 10)}, "Regime.drop_epochs must be increasing"),
    ({"weight_decay": -1.0}, "Regime.weight_decay must be >= 0"),
    ({"drop_factor": 0.0}, "Regime.drop_factor must be > 0"),
  ],
)
def test_bad_regimes_are_rejected(kwargs, message):
  base = {"lr": 0.1, "epochs": 10, "batch_size": 128}
  with pytest.raises(ValueError, match=message):
    Regime(**{**base, **kwargs})


def test_adapt_rejects_bad_batch_and_rule():
  with pytest.raises(ValueError, match="batch_size must be a positive integer"):
    adapt_regime(F1, 0)
  with pytest.raises(ValueError, match="unknown learning-rate rule 'square'"):
    adapt_regime(F1, 4096, lr_rule="square")


def test_growing_batch_phases_replace_drops_by_batch_growth():
  # Smith et al. 2018: x5 at each of F1's drops (epochs 10, 20, 30 of 50).
  grow = regimes.growing_batch_phases(F1, MNIST_TRAIN, growth_factor=5.0)
  # Phase k lasts its epochs at its batch: round(10 * 60000 / B) updates.
  assert grow.phases == ((0, 128), (4688, 640), (5626, 3200), (5814, 16000))
  assert grow.num_steps == 5814 + 75 and grow.lr_drop_steps == ()
  # The lr stays at its starting value (the default) ...
  assert grow.phase_lrs(0.1, 128, "sqrt") == (0.1,) * 4
  # ... or follows the batch by the rule (the option).
  np.testing.assert_allclose(
    grow.phase_lrs(0.1, 128, "sqrt", lr_follows_batch=True),
    [0.1, 0.1 * np.sqrt(5), 0.5, 0.1 * np.sqrt(125)],
  )


def test_growing_batch_default_factor_is_the_drop_factors_inverse():
  lb = dataclasses.replace(F1, batch_size=4096, drop_epochs=(10,), epochs=20)
  grow = regimes.growing_batch_phases(lb, MNIST_TRAIN)
  assert grow.phases == ((0, 4096), (146, 40960))  # 10 epochs: round(146.48), then x10
  assert grow.num_steps == 146 + 15
  lrs = grow.phase_lrs(0.1, 128, "sqrt")
  np.testing.assert_allclose(lrs, [0.1 * np.sqrt(32)] * 2)


def test_growing_batch_past_the_training_set_is_an_error_or_the_hybrid():
  lb = dataclasses.replace(F1, batch_size=4096)
  with pytest.raises(ValueError, match=r"reaches 409600 at epoch 20.*training set \(60000\)"):
    regimes.growing_batch_phases(lb, MNIST_TRAIN)
  # Hybrid: the batch stops at its maximum and the remaining drops decay the lr.
  hybrid = regimes.growing_batch_phases(lb, MNIST_TRAIN, max_batch_size=MNIST_TRAIN)
  assert hybrid.phases == ((0, 4096), (146, 40960))
  assert hybrid.lr_drop_steps == (146 + 15, 146 + 30) and hybrid.num_steps == 146 + 15 * 2 + 29
  with pytest.raises(ValueError, match="max_batch_size=70000 must be in"):
    regimes.growing_batch_phases(lb, MNIST_TRAIN, max_batch_size=70_000)


def test_growing_batch_rejects_empty_phases_and_indivisible_sizes():
  short = dataclasses.replace(F1, batch_size=4096, drop_epochs=(10, 10.01), epochs=12)
  with pytest.raises(ValueError, match=r"epoch 10 to 10.01 at batch 40960 has no update"):
    regimes.growing_batch_phases(short, MNIST_TRAIN)
  with pytest.raises(ValueError, match="reaches 192, not a multiple of 128"):
    regimes.growing_batch_phases(F1, MNIST_TRAIN, growth_factor=1.5, multiple_of=128)
  with pytest.raises(ValueError, match="needs drop epochs"):
    regimes.growing_batch_phases(dataclasses.replace(F1, drop_epochs=()), MNIST_TRAIN)
  with pytest.raises(ValueError, match="must be > 1"):
    regimes.growing_batch_phases(F1, MNIST_TRAIN, growth_factor=1.0)


def test_warmup_polynomial_decay_follows_the_formula_at_chosen_steps():
  peak, warmup, total, power = 3.0, 8, 48, 2.0
  lr = jax.jit(regimes.warmup_polynomial_decay(peak, warmup, total, power))
  for t in (0, 1, 4, 7, 8, 9, 20, 47, 48, 60):
    if t < warmup:
      expected = peak * t / warmup
    else:
      expected = peak * max(0.0, 1 - (t - warmup) / (total - warmup)) ** power
    np.testing.assert_allclose(float(lr(t)), expected, rtol=1e-6, atol=1e-7, err_msg=f"t={t}")
  no_warmup = regimes.warmup_polynomial_decay(peak, 0, total, 1.0)
  np.testing.assert_allclose(float(no_warmup(12)), peak * (1 - 12 / total), rtol=1e-6)
  with pytest.raises(ValueError, match="must end before the run's 48 updates"):
    regimes.warmup_polynomial_decay(peak, 48, total)
  with pytest.raises(ValueError, match="power must be > 0"):
    regimes.warmup_polynomial_decay(peak, 8, total, 0.0)


def test_lars_and_lamb_rows_run_on_the_poly_schedule_with_their_masks():
  from experiments.configs import f1
  from experiments.table1 import rows as rows_lib

  for row in ("lb+lars", "lb+lamb"):
    config = rows_lib.variant_config(f1, row, "quick")
    plan = training.make_plan(config, num_train=8000, num_devices=1)
    # 5 epochs of 8000 / 1024 updates, then power 2 to 0 at the run's end.
    warmup, total, peak = plan.poly_warmup_steps, plan.num_steps, config.regime.lr
    assert (plan.lr_decay, warmup, plan.poly_power) == ("poly", round(5 * 8000 / 1024), 2.0)
    lr = training.lr_schedule(plan)
    for t in (0, warmup // 2, warmup, (warmup + total) // 2, total):
      expected = (
        peak * t / warmup if t < warmup else peak * (1 - (t - warmup) / (total - warmup)) ** 2
      )
      np.testing.assert_allclose(float(lr(t)), expected, rtol=1e-5, atol=1e-9)
  sgd = training.make_plan(rows_lib.variant_config(f1, "lb", "quick"), 8000, num_devices=1)
  assert sgd.lr_decay == "steps" and sgd.regime.drop_epochs  # the SGD rows keep their drops
  params = {"dense": {"kernel": np.ones((3, 2)), "bias": np.ones(2)}, "bn": {"scale": np.ones(2)}}
  assert regimes.kernel_mask(params) == {
    "dense": {"kernel": True, "bias": False},
    "bn": {"scale": False},
  }
  bad = rows_lib.variant_config(f1, "lb+lars", "quick", {"regime.decay": "cosine"})
  with pytest.raises(ValueError, match=r"config.regime.decay='cosine'; valid: \('steps', 'poly'\)"):
    training.make_plan(bad, 8000, num_devices=1)
  grow = rows_lib.variant_config(f1, "sb+grow", "quick", {"regime.decay": "poly"})
  with pytest.raises(ValueError, match="has no drops"):
    training.make_plan(grow, 8000, num_devices=1)
