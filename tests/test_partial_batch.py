"""The kept partial last batch of every epoch: schedule, plan, step, loop, table driver.

The bigBatch reference code reads MNIST with PyTorch's DataLoader
(``drop_last=False``): at B=4096 an epoch of 60000 is 14 batches of 4096 and
one of 2656, 15 updates, 750 over 50 epochs where batches that cross epochs
give 732.
"""

import functools
import json
import math
import os
import types

import jax
import numpy as np
import optax
import pytest

from bigbatch_jax import data, training
from bigbatch_jax import protocol as protocol_lib
from bigbatch_jax.data import ArrayDataset, BatchIterator, BatchSchedule
from bigbatch_jax.ghost_batch_norm import GhostBatchNorm
from bigbatch_jax.training import loop as loop_lib
from bigbatch_jax.training import optimizer, parallel, setup
from bigbatch_jax.training import plan as plan_lib
from bigbatch_jax.training import spec as spec_lib
from experiments.configs import f1
from experiments.table1 import ablation, rows
from tests.test_training import _final_params, tiny_config

# 512 synthetic examples at B=96: 5 full batches and a partial one of 32 an
# epoch; ghost 12 gives K=8 ghost batches, so the partial one has ghosts of 4.
PARTIAL = {"large_batch_size": 96, "ghost_batch_size": 12, "partial_last_batch": True}


def _partial_config(variant="lb+lr+gbn", **overrides):
  return tiny_config(variant, **{**PARTIAL, **overrides})


# --- the schedule ---------------------------------------------------------------


@pytest.mark.parametrize(
  ("num_examples", "batch", "per_epoch", "partial"),
  [(60_000, 4096, 15, 2656), (512, 96, 6, 32), (10, 3, 4, 1), (512, 64, 8, 0)],
)
def test_schedule_closed_form(num_examples, batch, per_epoch, partial):
  schedule = BatchSchedule(((0, batch),), num_examples)
  assert schedule.steps_per_epoch(num_examples) == per_epoch == math.ceil(num_examples / batch)
  assert schedule.partial_size == partial
  assert schedule.num_steps(50, num_examples) == 50 * per_epoch
  assert schedule.epoch_first_steps(num_examples, 3 * per_epoch) == (0, per_epoch, 2 * per_epoch)
  for epoch in range(3):
    first = epoch * per_epoch
    sizes = [schedule(first + j) for j in range(per_epoch)]
    assert sum(sizes) == num_examples
    assert sizes == [batch] * (per_epoch - 1) + [partial or batch]
    # Update j of the epoch starts at epoch * N + j * B of the stream.
    for j in range(per_epoch):
      assert schedule.offset_at(first + j) == epoch * num_examples + j * batch
      assert data.offset_at_step(schedule, first + j) == epoch * num_examples + j * batch
  assert schedule.sizes == tuple(sorted({batch, partial} - {0}))
  if partial:
    # Calls of several updates stop before the partial batch and after it.
    assert schedule.next_change(0) == per_epoch - 1
    assert schedule.next_change(per_epoch - 1) == per_epoch
    assert schedule.next_change(per_epoch) == 2 * per_epoch - 1
  else:
    assert schedule.next_change(0) is None


def test_every_example_of_each_epoch_is_read_once():
  # Example i's input is i: the batches say which examples they hold.
  n = 10
  x = np.arange(n, dtype=np.float32)[:, None]
  dataset = ArrayDataset("ids", x, np.zeros(n, np.int32), x[:2], np.zeros(2, np.int32), 2)
  schedule = BatchSchedule(((0, 3),), n)
  with BatchIterator(dataset, schedule, seed=0, prefetch=0) as batches:
    got = [next(batches)["x"][:, 0].astype(int) for _ in range(3 * 4)]
  assert [len(b) for b in got] == [3, 3, 3, 1] * 3
  for epoch in range(3):
    seen = np.concatenate(got[4 * epoch : 4 * epoch + 4])
    assert sorted(seen) == list(range(n))
    np.testing.assert_array_equal(seen, data.stream_indices(0, n, epoch * n, n))
  # Resuming at any step reads the same batches.
  for step in (3, 4, 7):
    with BatchIterator(dataset, schedule, seed=0, start_step=step, prefetch=0) as batches:
      np.testing.assert_array_equal(next(batches)["x"][:, 0].astype(int), got[step])


def test_schedule_refuses_a_growing_batch_and_a_batch_past_the_epoch():
  with pytest.raises(ValueError, match=r"epoch_size=512\) needs one batch size"):
    BatchSchedule(((0, 16), (10, 32)), 512)
  with pytest.raises(ValueError, match=r"batch size 600 is larger than the epoch of 512"):
    BatchSchedule(((0, 600),), 512)


# --- the plan -------------------------------------------------------------------


def test_partial_last_batch_is_a_key_of_its_own_on_only_in_the_complete_reference():
  # The reference code's DataLoader keeps the partial batch: on in "reference",
  # off in "clean" and in the fitted selection.
  for name in protocol_lib.PROTOCOLS:
    kept = protocol_lib.resolve_protocol(tiny_config(protocol=name)).partial_last_batch
    assert kept == (name == "reference"), name
  alone = protocol_lib.resolve_protocol(tiny_config(partial_last_batch=True))
  assert alone.partial_last_batch and not alone.momentum_restart and not alone.main_normal_lr
  with pytest.raises(TypeError, match=r"partial_last_batch"):  # declared a bool in default.py
    tiny_config(partial_last_batch="yes")


def test_plan_on_the_papers_mnist_takes_750_updates_with_drops_at_epochs():
  config = f1.get_config("lb")
  off = plan_lib.make_plan(config, num_train=60_000, num_devices=1)
  config.partial_last_batch = True
  plan = plan_lib.make_plan(config, num_train=60_000, num_devices=1)
  assert (off.num_steps, plan.num_steps) == (732, 750)
  assert plan.steps_per_epoch == 15 and plan.batch_sizes == (2656, 4096)
  # The drops at epochs 10, 20, 30 land on those epochs' first updates.
  lr = plan_lib.lr_schedule(plan)
  for epoch in (10, 20, 30):
    assert float(lr(15 * epoch)) < float(lr(15 * epoch - 1))
  assert float(lr(15 * 10 + 1)) == float(lr(15 * 10))
  # The epoch in the metrics: whole at each epoch's first update.
  assert [plan.epoch_at(15 * e) for e in (1, 2, 50)] == [1.0, 2.0, 50.0]
  assert plan.epoch_at(14) == pytest.approx(14 * 4096 / 60_000)
  # +GBN: the partial batch splits into the full batch's 32 ghost batches (torch.chunk).
  gbn = f1.get_config("lb+lr+gbn")
  gbn.partial_last_batch = True
  assert plan_lib.make_plan(gbn, 60_000, 1).ghost_batch_size_at(2656) == 83
  # Fractions of training: the drops follow the epochs through the schedule.
  config.regime.drop_epochs, config.regime.drop_fractions = (), (0.5,)
  config.regime.epochs = 3.0
  half = plan_lib.make_plan(config, 60_000, 1)
  half_lr = plan_lib.lr_schedule(half)
  # Half of 3 epochs of 15 updates: round(22.5) = 22.
  assert half.num_steps == 45 and float(half_lr(0)) == float(half_lr(21)) > float(half_lr(22))


def test_plan_warmup_and_momentum_restart_follow_the_epochs():
  config = _partial_config("lb+lr+warmup", momentum_restart=True, warmup_epochs=1.0)
  plan = plan_lib.make_plan(config, num_train=512, num_devices=1)
  assert plan.num_steps == 12 and plan.warmup_steps == 6
  assert plan.momentum_restart_steps == (0, 6)
  assert all(plan.offset_at(s) % 512 == 0 for s in plan.momentum_restart_steps)


def test_plan_errors_name_the_sizes():
  with pytest.raises(ValueError, match=r"num_train=510 at batch_size=96 has 30 examples, not "
                     r"divisible by the 4 devices"):  # fmt: skip
    plan_lib.make_plan(_partial_config(), num_train=510, num_devices=4)
  with pytest.raises(ValueError, match=r"not divisible by the 4 processes"):
    plan_lib.make_plan(_partial_config(ghost_batch_size=6), 510, 2, process_count=4)
  # Ghost 8: K = 12 ghost batches, which do not split the partial 32 equally.
  with pytest.raises(ValueError, match=r"has 32 examples, 32 per device.*12 ghost batches"):
    plan_lib.make_plan(_partial_config(ghost_batch_size=8), 512, 1)
  with pytest.raises(ValueError, match=r"variant 'lb\+grow' grows the batch"):
    plan_lib.make_plan(_partial_config("lb+grow"), 512, 1)
  # Four devices divide 32: 8 per device, K = 2 ghosts of 4 each.
  four = plan_lib.make_plan(_partial_config(ghost_batch_size=12), 512, 4)
  assert four.ghost_batch_size_at(32) == 4 and four.ghost_batch_size_at(96) == 12


def test_key_off_and_an_epoch_without_remainder_keep_todays_plan():
  for extra in ({"partial_last_batch": False}, {"large_batch_size": 64, "ghost_batch_size": 8}):
    on = plan_lib.make_plan(_partial_config(momentum_restart=True, **extra), 512, 1)
    sizes = {"large_batch_size": on.batch_size, "ghost_batch_size": on.ghost_batch_size}
    off = plan_lib.make_plan(tiny_config("lb+lr+gbn", momentum_restart=True, **sizes), 512, 1)
    assert on.partial_batch_size == 0 and on.batch_sizes == off.batch_sizes
    for key in ("num_steps", "momentum_restart_steps", "steps_per_epoch", "regime"):
      assert getattr(on, key) == getattr(off, key), key
    assert [on.offset_at(s) for s in range(20)] == [off.offset_at(s) for s in range(20)]


# --- the step and the loop ------------------------------------------------------


def test_momentum_restarts_at_each_epochs_first_update_after_the_partial_batch():
  config = _partial_config("lb+lr", momentum_restart=True, **{"regime.drop_epochs": ()})
  plan = plan_lib.make_plan(config, num_train=512, num_devices=1)
  assert plan.momentum_restart_steps == (0, 6)  # update 5 is the partial batch
  params = {"w": np.ones(3, np.float32)}
  keys = jax.random.split(jax.random.key(1), 8)
  grads = [{"w": jax.random.normal(k, (3,))} for k in keys]
  tx = optimizer.make_optimizer(plan, jax.random.key(0))
  state, outputs = tx.init(params), []
  for g in grads:
    update, state = tx.update(g, state, params)
    outputs.append(update)
  lr = 0.05 * np.sqrt(96 / 16)
  for t in (0, 6):  # PyTorch's first step of a fresh SGD: -lr (g + wd w)
    np.testing.assert_allclose(outputs[t]["w"], -lr * (grads[t]["w"] + 1e-4), rtol=1e-5)
  for t in (5, 7):
    assert not np.allclose(outputs[t]["w"], -lr * (grads[t]["w"] + 1e-4), rtol=1e-5)


def test_the_partial_step_normalizes_its_ghost_chunks_and_averages_its_real_examples():
  config = _partial_config()
  spec = spec_lib.resolve(config, num_train=512, num_devices=1)
  plan = spec.plan
  mesh = parallel.make_mesh(1)
  run = setup.set_up_run(spec, mesh, 4, (16,))
  assert run.step_args_at(96, plan) is run.step_args
  steps = loop_lib.CompiledSteps(run, mesh, (16,), plan)
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(32, 16)).astype(np.float32), "y": rng.integers(0, 4, 32)}
  batch["y"] = batch["y"].astype(np.int32)
  params, stats = jax.device_get((run.state.params, run.state.batch_stats))
  _, metrics = steps.get(32, 1)(run.state, parallel.put_batch(batch, mesh))
  # By hand: plain batch norm on each of torch.chunk(batch, 8)'s chunks of 4.
  plain = setup.build_model(spec, 4, functools.partial(GhostBatchNorm, ghost_batch_size=None))
  logits = []
  for chunk in np.split(batch["x"], 8):
    out, _ = plain.apply(
      {"params": params, "batch_stats": stats}, chunk, train=True, mutable=["batch_stats"]
    )
    logits.append(out)
  expected = optax.softmax_cross_entropy_with_integer_labels(np.concatenate(logits), batch["y"])
  np.testing.assert_allclose(float(metrics["loss"]), float(expected.mean()), rtol=1e-5)


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_tiny_run_takes_the_schedules_updates_and_evaluates_at_each_epoch(tmp_path):
  config = _partial_config(
    log_every_steps=1, steps_per_call=5, checkpoint_every_steps=0, eval_on_train=False
  )
  training.train_and_evaluate(config, str(tmp_path))
  records = _records(tmp_path)
  train = [r for r in records if "loss" in r]
  assert [r["step"] for r in train] == list(range(1, 13))
  assert [r["batch_size"] for r in train] == [96] * 5 + [32] + [96] * 5 + [32]
  assert [r["epoch"] for r in train if r["epoch"] == int(r["epoch"])] == [1.0, 2.0]
  evals = [r for r in records if "test_accuracy" in r]
  assert [(r["step"], r["epoch"]) for r in evals] == [(6, 1.0), (12, 2.0)]
  # The lr drop at epoch 1 lands on update 6, the next epoch's first.
  assert train[6]["lr"] < train[5]["lr"] == train[0]["lr"]


@pytest.mark.slow  # five tiny runs, ~60 s on two cores
def test_resume_is_bit_identical_and_four_devices_equal_one(tmp_path):
  run = {"momentum_restart": True, "checkpoint_every_steps": 3}
  straight = str(tmp_path / "straight")
  training.train_and_evaluate(_partial_config(**run), straight)
  for stop in (5, 6):  # before the partial batch, and right after it
    resumed = str(tmp_path / f"resumed_{stop}")
    training.train_and_evaluate(_partial_config(**run, stop_after_steps=stop), resumed)
    training.train_and_evaluate(_partial_config(**run), resumed)
    jax.tree.map(np.testing.assert_array_equal, _final_params(straight), _final_params(resumed))
  four = str(tmp_path / "four")
  training.train_and_evaluate(_partial_config(momentum_restart=True, num_devices=4), four)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
    _final_params(straight),
    _final_params(four),
  )
  # Where the batch divides the training set the key changes nothing.
  divides = {"large_batch_size": 64, "ghost_batch_size": 8}
  on, off = str(tmp_path / "on"), str(tmp_path / "off")
  training.train_and_evaluate(_partial_config(**divides), on)
  training.train_and_evaluate(_partial_config(partial_last_batch=False, **divides), off)
  jax.tree.map(np.testing.assert_array_equal, _final_params(on), _final_params(off))


# --- the table driver -----------------------------------------------------------


def test_ablation_applies_the_partial_batch_where_the_batch_leaves_a_remainder():
  # MNIST-1D's quick preset: 8000 training examples; SB 64 divides, LB 1024 leaves 832.
  vectors = types.SimpleNamespace(
    name="mnist1d", input_shape=(40,), num_train=8000, num_classes=10, mean=None, std=None
  )
  sb = rows.variant_config(f1, "sb", "quick", {})
  lb = rows.variant_config(f1, "lb+lr+gbn", "quick", {})
  assert ablation.not_applicable("partial_last_batch", sb, vectors) == (
    "batch 64 divides the 8000 training examples"
  )
  assert ablation.not_applicable("partial_last_batch", lb, vectors) is None
  on = ablation.with_artefacts(lb, ("partial_last_batch",))
  assert on.partial_last_batch and not on.momentum_restart
  plan = plan_lib.make_plan(on, 8000, num_devices=1)
  assert plan.partial_batch_size == 832 and plan.ghost_batch_size_at(832) == 52
  # "All that apply together" holds it where it applies.
  configs, skipped = ablation.ablation_configs(f1, ("sb", "lb+lr+gbn"), "quick", {}, vectors)
  assert "partial_last_batch/lb+lr+gbn" in configs and "partial_last_batch/sb" not in configs
  assert configs["all/lb+lr+gbn"].partial_last_batch and not configs["all/sb"].partial_last_batch
  assert "divides the 8000" in skipped["partial_last_batch"]["sb"]
