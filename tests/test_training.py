"""The training system end to end: variants, data sources, parallelism, resume, errors."""

import itertools
import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from bigbatch_jax import training
from bigbatch_jax.training import parallel
from bigbatch_jax.training import plan as plan_lib
from bigbatch_jax.training import spec as spec_lib
from bigbatch_jax.training import step as step_lib
from experiments.configs import common, default, f1
from tests import tiny_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(variant="lb+lr+gbn", **overrides):
  """A tiny F1 on synthetic data: base batch 16, large 64, ghost 8."""
  config = default.get_config()
  config.variant = variant
  config.dataset = "synthetic"
  config.model = "f1"
  config.model_options.hidden = 32
  config.model_options.depth = 2
  config.base_batch_size = 16
  config.large_batch_size = 64
  config.ghost_batch_size = 8
  config.regime.lr = 0.05
  config.regime.weight_decay = 1e-4
  config.regime.epochs = 2.0
  config.regime.drop_epochs = (1.0,)
  config.log_every_steps = 4
  config.eval_batch_size = 64
  config.checkpoint_every_steps = 8
  config.progress_bar = False
  common.override(config, overrides)
  return config


def _final_params(workdir):
  state = training.Checkpointer(os.path.join(workdir, "checkpoints")).restore_raw()
  return state["params"], state["batch_stats"]


VARIANTS = [
  "sb",
  "lb",
  "lb+lr",
  "lb+lr+gbn",
  "lb+lr+gbn+ra",
  "lb+mult",
  "lb+lr+mult",
  "lb+linear+white",
  "lb+lr+gbn+clip",
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_and_writes_its_outputs(variant, tmp_path):
  summary = training.train_and_evaluate(tiny_config(variant), str(tmp_path))
  for name in ("metrics.jsonl", "summary.json", "config.json", "error_curves.png"):
    assert (tmp_path / name).exists(), name
  assert (tmp_path / "weight_distance.png").stat().st_size > 1000
  assert summary["variant"] == variant
  assert 0 <= summary["test_accuracy"] <= 1
  assert summary["weight_distance"] > 0
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_records = [r for r in records if "loss" in r]
  assert train_records and all(np.isfinite(r["loss"]) for r in train_records)
  assert {"lr", "grad_norm", "weight_distance", "train_batch_accuracy", "examples_per_sec"} <= set(
    train_records[-1]
  )
  assert any(k.startswith("weight_distance/fc") for k in train_records[-1])
  assert [r for r in records if "test_accuracy" in r]
  steps = training.Checkpointer(str(tmp_path / "checkpoints")).all_steps()
  assert steps[-1] == summary["updates"]
  expected_updates = {"sb": 64, "lb+lr+gbn+ra": 64}.get(variant, 16)  # 512 train, 2 epochs
  assert summary["updates"] == expected_updates


def test_derived_learning_rates_follow_the_variant():
  def plan(variant, **kw):
    return plan_lib.make_plan(tiny_config(variant, **kw), num_train=512, num_devices=1)

  assert plan("sb").lr_scale == 1.0
  assert plan("lb").lr_scale == 1.0
  assert plan("lb+lr").lr_scale == pytest.approx(2.0)  # sqrt(64 / 16)
  assert plan("lb+linear+white").lr_scale == pytest.approx(4.0)
  # A batch-size override keeps the derived quantities consistent.
  overridden = plan("lb+lr+ra", batch_size=256)
  assert overridden.lr_scale == pytest.approx(4.0)
  assert overridden.regime.epochs == pytest.approx(32.0)
  assert overridden.num_steps == plan("sb").num_steps
  assert plan("lb+mult").noise_variance == 3.0
  assert plan("lb+lr+gbn").ghost_batch_size == 8
  assert plan("lb+lr").ghost_batch_size is None


def test_learning_rate_in_the_metrics_is_the_scaled_schedule(tmp_path):
  training.train_and_evaluate(tiny_config("lb+lr", log_every_steps=1), str(tmp_path))
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
  # lr 0.05 * sqrt(4) = 0.1, dropped x0.1 after epoch 1 (update 8 of 16).
  assert lrs[1] == pytest.approx(0.1) and lrs[8] == pytest.approx(0.1)
  assert lrs[9] == pytest.approx(0.01) and lrs[16] == pytest.approx(0.01)


def test_mnist1d_and_npz_sources(tmp_path, monkeypatch):
  monkeypatch.setenv("BIGBATCH_JAX_CACHE", str(tmp_path / "cache"))
  summary = training.train_and_evaluate(
    tiny_config("sb", dataset="mnist1d", mnist1d_num_samples=400, num_epochs=0.5),
    str(tmp_path / "mnist1d"),
  )
  assert summary["updates"] == 10  # 320 train examples / 16 * 0.5

  rng = np.random.default_rng(0)
  path = tmp_path / "data.npz"
  np.savez(
    path,
    x_train=rng.integers(0, 255, (128, 6, 6, 1), dtype=np.uint8),
    y_train=rng.integers(0, 3, 128),
    x_test=rng.integers(0, 255, (32, 6, 6, 1), dtype=np.uint8),
    y_test=rng.integers(0, 3, 32),
  )
  summary = training.train_and_evaluate(
    tiny_config("sb", dataset=f"npz:{path}"), str(tmp_path / "npz")
  )
  assert summary["updates"] == 16


def test_real_tfds_mnist_path_under_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=128):
    summary = training.train_and_evaluate(
      tiny_config("lb+lr+gbn", dataset="tfds:mnist", num_epochs=1.0), str(tmp_path)
    )
  assert summary["dataset"] == "tfds:mnist" and summary["updates"] == 2


def _global_params_after(tmp_path, name, config):
  workdir = str(tmp_path / name)
  training.train_and_evaluate(config, workdir)
  return _final_params(workdir)


@pytest.mark.parametrize("variant", ["lb+lr+gbn", "lb+mult", "lb", "lb+lr+gni"])
def test_four_devices_equal_one_device(variant, tmp_path):
  # Global batch 4 * 16 with ghost 8: each device holds two ghost batches.
  # num_devices=None would take every (simulated) device: one device is asked for.
  config = tiny_config(variant, num_epochs=1.0, num_devices=1)
  one = _global_params_after(tmp_path, "one", config)
  config.num_devices = 4
  four = _global_params_after(tmp_path, "four", config)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), one, four)


def test_pmap_and_shard_map_give_the_same_step():
  config = tiny_config("lb+lr+gbn+mult")
  spec = spec_lib.resolve(config, num_train=512, num_devices=4)
  plan = spec.plan
  norm = training.norm_layer(spec, axis_name=step_lib.AXIS)
  from bigbatch_jax import models

  model = models.get_model("f1", 4, norm=norm, hidden=32, depth=2)
  tx = training.make_optimizer(plan, jax.random.key(1))
  state = training.create_train_state(model, tx, jnp.zeros((1, 16)), jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {
    "x": rng.normal(size=(64, 16)).astype(np.float32),
    "y": rng.integers(0, 4, 64).astype(np.int32),
  }
  static = {"model": model, "tx": tx, "learning_rate": plan_lib.lr_schedule(plan)}
  static["noise_variance"] = plan.noise_variance

  mesh = parallel.make_mesh(4)
  shard_fn = parallel.shard_train_step(step_lib.train_step, mesh, **static)
  pmap_fn = parallel.pmap_train_step(step_lib.train_step, 4, **static)

  sharded_state = jax.device_put(state, parallel.replicated(mesh))
  stacked_state = jax.tree.map(lambda v: jnp.broadcast_to(v, (4, *v.shape)), state)
  for _ in range(3):
    sharded_state, m1 = shard_fn(sharded_state, parallel.put_batch(batch, mesh))
    stacked_state, m2 = pmap_fn(
      stacked_state, jax.tree.map(lambda v: v.reshape(4, 16, *v.shape[1:]), batch)
    )
  unstacked = jax.tree.map(lambda v: v[0], stacked_state)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    (sharded_state.params, sharded_state.batch_stats),
    (unstacked.params, unstacked.batch_stats),
  )
  np.testing.assert_allclose(m1["loss"], m2["loss"][0], rtol=1e-5)


def test_one_compilation_for_the_whole_run(tmp_path):
  compiles = []

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    # The first run of a process also compiles one-off helpers (orbax's
    # slicing, key set-up); count the compilations of later runs.
    training.train_and_evaluate(tiny_config("lb+lr+gbn", num_epochs=1.0), str(tmp_path / "warm"))
    compiles.clear()
    training.train_and_evaluate(tiny_config("lb+lr+gbn", num_epochs=2.0), str(tmp_path / "a"))
    short = len(compiles)
    compiles.clear()
    training.train_and_evaluate(tiny_config("lb+lr+gbn", num_epochs=6.0), str(tmp_path / "b"))
    long = len(compiles)
  finally:
    jax.monitoring.clear_event_listeners()
  # Three times the steps, evaluations and checkpoints, the same compilations:
  # the train step, the eval step and the state initialization, once each.
  assert long == short <= 4


def test_same_seed_same_parameters_different_seed_different(tmp_path):
  a = _global_params_after(tmp_path, "a", tiny_config("lb+lr+gbn+mult", num_epochs=1.0))
  b = _global_params_after(tmp_path, "b", tiny_config("lb+lr+gbn+mult", num_epochs=1.0))
  c = _global_params_after(tmp_path, "c", tiny_config("lb+lr+gbn+mult", num_epochs=1.0, seed=1))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.allclose(a[0]["fc1"]["kernel"], c[0]["fc1"]["kernel"])


def _run_main(workdir, *flags):
  command = [
    sys.executable,
    "-m",
    "experiments.main",
    *tiny_run.RUN_FLAGS,
    f"--workdir={workdir}",
    "--config.log_every_steps=2",
    "--config.checkpoint_every_steps=100",
    *flags,
  ]
  result = subprocess.run(
    command, cwd=REPO, env=tiny_run.ENV, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow  # two training subprocesses: about 60 s on two shared cores
def test_resume_in_a_new_process_is_exact(tmp_path):
  # 512 examples, 3 epochs at batch 64: 24 updates. Stop at 12, resume in a new process.
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  _run_main(straight)
  _run_main(resumed, "--config.stop_after_steps=12")
  assert training.Checkpointer(str(resumed / "checkpoints")).all_steps() == [12]
  _run_main(resumed)
  a, b = _final_params(str(straight)), _final_params(str(resumed))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert tiny_run.read_records(straight) == tiny_run.read_records(resumed)


def test_divergence_stops_with_the_step_lr_and_quantity_keeping_the_last_good_checkpoint(tmp_path):
  config = tiny_config("lb+lr", checkpoint_every_steps=1, log_every_steps=1)
  config.regime.lr = 1e6
  config.regime.drop_epochs = ()
  config.divergence_loss_factor = None  # only the non-finite check
  with pytest.raises(FloatingPointError, match=r"training diverged: non-finite") as info:
    training.train_and_evaluate(config, str(tmp_path))
  message = info.value.args[0]
  bad_step = int(message.split(" at step ")[1].split(",")[0])
  assert "learning rate 2e+06" in message and "'sqrt' rule at batch 64" in message
  kept = training.Checkpointer(str(tmp_path / "checkpoints")).all_steps()
  assert kept and kept[-1] <= bad_step
  assert f"last good checkpoint (step {kept[-1]})" in message
  params, _ = _final_params(str(tmp_path))
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))


def _tiny_step(skip_nonfinite):
  config = tiny_config("lb+lr+gbn")
  spec = spec_lib.resolve(config, num_train=512, num_devices=1)
  plan = spec.plan
  norm = training.norm_layer(spec, axis_name=step_lib.AXIS)
  from bigbatch_jax import models

  model = models.get_model("f1", 4, norm=norm, hidden=32, depth=2)
  tx = training.make_optimizer(plan, jax.random.key(1))
  step, state, mesh = tiny_run.sharded_step(
    plan, model, tx, jnp.zeros((1, 16)), skip_nonfinite=skip_nonfinite
  )
  rng = np.random.default_rng(0)
  good = {"x": rng.normal(size=(64, 16)).astype(np.float32), "y": np.zeros(64, np.int32)}
  bad = {"x": good["x"].copy(), "y": good["y"]}
  bad["x"][3, 5] = np.nan  # an injected NaN
  return step, jax.device_put(state, parallel.replicated(mesh)), good, bad, mesh


def test_skip_policy_skips_a_nan_update_and_counts_it():
  step, state, good, bad, mesh = _tiny_step(skip_nonfinite=True)
  state, _ = step(state, parallel.put_batch(good, mesh))

  # The optimizer's accumulators stay; its counters follow state.step
  # (tests/test_skipped_steps.py).
  def kept(state):
    floats = [x for x in jax.tree.leaves(state.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jax.device_get((state.params, state.batch_stats, floats))

  before = kept(state)
  state, metrics = step(state, parallel.put_batch(bad, mesh))
  after = kept(state)
  jax.tree.map(np.testing.assert_array_equal, before, after)
  assert int(metrics["skipped_steps"]) == 1 and int(state.step) == 2
  assert int(state.nonfinite_step) == -1
  state, metrics = step(state, parallel.put_batch(good, mesh))
  assert int(metrics["skipped_steps"]) == 1 and np.isfinite(metrics["loss"])


def test_stop_policy_records_the_step_and_quantity_of_an_injected_nan():
  step, state, good, bad, mesh = _tiny_step(skip_nonfinite=False)
  state, _ = step(state, parallel.put_batch(good, mesh))
  state, _ = step(state, parallel.put_batch(bad, mesh))
  state, _ = step(state, parallel.put_batch(good, mesh))
  assert int(state.nonfinite_step) == 1 and int(state.nonfinite_kind) == 3


def test_skip_policy_in_a_run_reports_skips(tmp_path):
  config = tiny_config("lb+lr", nonfinite_policy="skip", log_every_steps=1)
  config.regime.lr = 1e6
  config.divergence_loss_factor = None
  # No limit: tests/test_run_records.py checks the default one.
  config.nonfinite_max_skip_fraction = 1.0
  config.nonfinite_max_consecutive_skips = 10**6
  summary = training.train_and_evaluate(config, str(tmp_path))
  assert summary["skipped_steps"] > 0


def test_an_exploding_but_finite_loss_is_reported_as_divergence(tmp_path):
  config = tiny_config("lb+lr", log_every_steps=1)
  config.regime.lr = 30.0
  config.regime.drop_epochs = ()
  with pytest.raises(FloatingPointError, match=r"diverged: loss .* over 1000 times the first"):
    training.train_and_evaluate(config, str(tmp_path))


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
  config = tiny_config("lb+lr+gbn", checkpoint_every_steps=4, max_checkpoints_to_keep=3)
  straight = tmp_path / "straight"
  training.train_and_evaluate(config, str(straight))
  broken = tmp_path / "broken"
  config.stop_after_steps = 12
  training.train_and_evaluate(config, str(broken))
  assert training.Checkpointer(str(broken / "checkpoints")).all_steps() == [4, 8, 12]
  # Damage every data file of the newest checkpoint.
  for root, _, files in os.walk(broken / "checkpoints" / "12"):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 0 and "metadata" not in name:
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
  config.stop_after_steps = None
  training.train_and_evaluate(config, str(broken))
  assert "checkpoint 12" in capsys.readouterr().out
  jax.tree.map(
    np.testing.assert_array_equal, _final_params(str(straight)), _final_params(str(broken))
  )
  assert tiny_run.read_records(straight) == tiny_run.read_records(broken)


def test_f1_config_derives_the_paper_regime():
  config = f1.get_config("lb+lr+gbn+ra")
  plan = plan_lib.make_plan(config, num_train=60_000, num_devices=1)
  assert plan.batch_size == 4096 and plan.ghost_batch_size == 128
  assert plan.regime.epochs == 1600 and plan.regime.drop_epochs == (320, 640, 960)
  assert plan.lr_scale * config.regime.lr == pytest.approx(0.1 * 32**0.5)
  assert plan.num_steps == plan_lib.make_plan(f1.get_config("sb"), 60_000, 1).num_steps
  assert plan.clip_norm == 5.0 and plan.clip_steps is None
  with pytest.raises(ValueError, match="unknown config options"):
    f1.get_config("lb,fast")


def test_every_optional_key_can_be_set_from_the_command_line(monkeypatch):
  from absl import flags
  from ml_collections import config_flags

  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  overrides = {
    "batch_size": "256",
    "ghost_batch_size": "32",
    "lr_rule": "0.75",
    "num_epochs": "3",
    "grad_clip_norm": "2.5",
    "grad_clip_steps": "100",
    "mult_noise_variance": "4",
    "num_devices": "1",
    "data_seed": "7",
    "stop_after_steps": "10",
  }
  argv = ["prog", f"--config={REPO}/experiments/configs/f1.py:lb+lr+gbn+mult"]
  argv += [f"--config.{k}={v}" for k, v in overrides.items()]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads overrides from sys.argv
  values(argv)
  config = values.config
  plan = plan_lib.make_plan(config, num_train=60_000, num_devices=1)
  assert (plan.batch_size, plan.ghost_batch_size, plan.lr_rule) == (256, 32, 0.75)
  assert (plan.regime.epochs, plan.clip_norm, plan.clip_steps) == (3.0, 2.5, 100)
  assert plan.noise_variance == 4.0 and config.data_seed == 7 and config.stop_after_steps == 10
  misspelled = ["prog", f"--config={REPO}/experiments/configs/f1.py:sb", "--config.batch_szie=1"]
  monkeypatch.setattr(sys, "argv", misspelled)
  with pytest.raises(Exception, match="batch_szie"):
    flags_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flags_values, lock_config=True)
    flags_values(misspelled)


def test_distance_triggered_drops_follow_the_weight_distance(tmp_path):
  reference = tmp_path / "reference"
  training.train_and_evaluate(tiny_config("sb", log_every_steps=1), str(reference))
  targets = training.metrics.distances_at_drops(str(reference))
  assert len(targets) == 1  # the regime drops once, after epoch 1
  config = tiny_config("lb+lr+dist", log_every_steps=1, drop_distances_from=str(reference))
  config.regime.epochs = 6.0
  training.train_and_evaluate(config, str(tmp_path / "dist"))
  records = [r for r in tiny_run.read_records(tmp_path / "dist") if "lr" in r]
  lrs = [r["lr"] for r in records]
  assert lrs[0] == pytest.approx(0.1)  # 0.05 * sqrt(4), no epoch-based drop
  # The learning rate drops exactly once the distance (before the update) reached the target.
  for before, record in itertools.pairwise(records):
    assert (record["lr"] < lrs[0] * 0.5) == (before["weight_distance"] >= targets[0])


def test_growing_batch_compiles_each_size_once_and_keeps_the_lr(tmp_path, caplog):
  config = tiny_config("lb+lr+gbn+grow", log_every_steps=1, batch_growth_factor=2.0)
  plan = plan_lib.make_plan(config, num_train=512, num_devices=4)
  # 64 for epoch 1 (8 updates), then 128 for epoch 2 (4 updates); ghost 8 throughout.
  assert plan.batch_phases == ((0, 64), (8, 128)) and plan.num_steps == 12
  assert plan.offset_at(12) == 1024 and plan.epoch_at(8) == 1.0
  with caplog.at_level(logging.WARNING), jax.log_compiles(True):
    summary = training.train_and_evaluate(config, str(tmp_path / "grow"))
  step_compiles = [r for r in caplog.records if "Compiling jit(train_step)" in r.getMessage()]
  assert len(step_compiles) == 2  # one per batch size
  assert summary["updates"] == 12 and summary["final_batch_size"] == 128
  records = [r for r in tiny_run.read_records(tmp_path / "grow") if "lr" in r]
  assert [r["batch_size"] for r in records] == [64] * 8 + [128] * 4
  # Smith et al.: the lr stays at its start, 0.05 * sqrt(64 / 16), no drop at epoch 1.
  assert [r["lr"] for r in records] == pytest.approx([0.1] * 12)


def test_growing_batch_lr_follows_the_batch_as_an_option():
  config = tiny_config("lb+lr+gbn+grow", batch_growth_factor=2.0, grow_lr_follows_batch=True)
  plan = plan_lib.make_plan(config, num_train=512, num_devices=4)
  lr = plan_lib.lr_schedule(plan)
  # The sqrt rule on each phase's batch: 0.05 * sqrt(64 / 16), then 0.05 * sqrt(128 / 16).
  assert float(lr(7)) == pytest.approx(0.1) and float(lr(8)) == pytest.approx(0.05 * 8**0.5)


def test_growing_batch_past_the_training_set_errors_or_decays_the_lr():
  config = tiny_config("lb+lr+grow", **{"regime.epochs": 3.0, "regime.drop_epochs": (1.0, 2.0)})
  with pytest.raises(ValueError, match=r"reaches 6400 at epoch 2, larger than the training set"):
    plan_lib.make_plan(config, num_train=1000, num_devices=1)
  config.batch_growth_max = 1000
  plan = plan_lib.make_plan(config, num_train=1000, num_devices=1)
  # 64 for epoch 1 (16 updates), 640 for epochs 2 and 3 (2 updates each); the
  # second drop decays the lr instead (Smith et al.'s hybrid).
  assert plan.batch_phases == ((0, 64), (16, 640)) and plan.num_steps == 20
  lr = plan_lib.lr_schedule(plan)
  assert [float(lr(s)) for s in (0, 17, 18)] == pytest.approx([0.1, 0.1, 0.01])


def test_grow_and_dist_reject_bad_settings():
  with pytest.raises(ValueError, match="'grow' and 'dist'"):
    plan_lib.make_plan(tiny_config("lb+grow+dist"), 512, 1)
  with pytest.raises(ValueError, match="needs the \\|\\|w - w0\\|\\| targets"):
    plan_lib.make_plan(tiny_config("lb+dist"), 512, 1)
  with pytest.raises(ValueError, match="reaches 83, not a multiple of 4"):
    plan_lib.make_plan(tiny_config("lb+grow", batch_growth_factor=1.3), 512, 4)


def test_several_steps_per_call_give_the_same_run(tmp_path):
  one = tiny_config("lb+lr+gbn+mult", log_every_steps=2, num_epochs=3.0)
  training.train_and_evaluate(one, str(tmp_path / "one"))
  scanned = tiny_config("lb+lr+gbn+mult", log_every_steps=2, num_epochs=3.0, steps_per_call=4)
  training.train_and_evaluate(scanned, str(tmp_path / "scan"))
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    _final_params(str(tmp_path / "one")),
    _final_params(str(tmp_path / "scan")),
  )

  # Metrics are still per step: the same logged steps and values.
  def train_records(name):
    return [r for r in tiny_run.read_records(tmp_path / name) if "loss" in r]

  a, b = train_records("one"), train_records("scan")
  assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(2, 25, 2))
  np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5)


def test_bfloat16_compute_keeps_float32_state_and_the_same_semantics(tmp_path):
  f32 = training.train_and_evaluate(tiny_config("lb+lr+gbn", num_epochs=4.0), str(tmp_path / "f32"))
  bf16 = training.train_and_evaluate(
    tiny_config("lb+lr+gbn", num_epochs=4.0, compute_dtype="bfloat16"), str(tmp_path / "bf16")
  )
  raw = training.Checkpointer(str(tmp_path / "bf16" / "checkpoints")).restore_raw()
  for leaf in jax.tree.leaves((raw["params"], raw["batch_stats"], raw["opt_state"])):
    assert leaf.dtype in (np.float32, np.int32), leaf.dtype
  # Same training problem: bf16 rounding (8 mantissa bits) changes digits, not the outcome.
  assert abs(bf16["test_accuracy"] - f32["test_accuracy"]) < 0.05
  assert bf16["weight_distance"] == pytest.approx(f32["weight_distance"], rel=0.05)
  a, b = _final_params(str(tmp_path / "f32"))[0], raw["params"]
  rel = optax_rel_error(a, b)
  assert 0 < rel < 0.05  # different (really bf16), but close


def optax_rel_error(a, b):
  diff = np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))
  norm = np.sqrt(sum(np.sum(x**2) for x in jax.tree.leaves(a)))
  return diff / norm


def test_one_loss_with_optional_per_example_weights():
  from bigbatch_jax.training.loss import correct, cross_entropy

  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  labels = jnp.asarray([0, 1, 2, 3, 0, 1])
  weights = jnp.asarray([1.0, 0.5, 2.0, 0.0, 1.0, 1.5])
  log_p = jax.nn.log_softmax(logits)
  losses = -np.asarray(log_p)[np.arange(6), np.asarray(labels)]
  np.testing.assert_allclose(cross_entropy(logits, labels), losses.mean(), rtol=1e-6)
  np.testing.assert_allclose(
    cross_entropy(logits, labels, weights), (np.asarray(weights) * losses).mean(), rtol=1e-6
  )
  np.testing.assert_allclose(
    cross_entropy(logits, labels, weights, reduction="sum"),
    (np.asarray(weights) * losses).sum(),
    rtol=1e-6,
  )
  assert list(correct(logits, labels)) == list(np.argmax(logits, -1) == np.asarray(labels))
  with pytest.raises(ValueError, match="reduction='max'; valid: \\('mean', 'sum'\\)"):
    cross_entropy(logits, labels, reduction="max")


def test_one_weight_distance_for_the_step_the_transform_and_the_diagnostics():
  from bigbatch_jax import diagnostics, transforms

  rng = np.random.default_rng(1)
  w0 = {
    "a": {"k": jnp.asarray(rng.normal(size=(3, 2)))},
    "b": {"k": jnp.asarray(rng.normal(size=4))},
  }
  w = jax.tree.map(lambda x: x + 0.5, w0)
  expected = np.sqrt(0.25 * 10)
  np.testing.assert_allclose(transforms.tree_distance(w, w0), expected, rtol=1e-6)
  np.testing.assert_allclose(diagnostics.weight_distance(w, w0), expected, rtol=1e-6)
  per_layer = step_lib.weight_distances(w, w0)
  np.testing.assert_allclose(per_layer["weight_distance"], expected, rtol=1e-6)
  np.testing.assert_allclose(per_layer["weight_distance/a"], np.sqrt(0.25 * 6), rtol=1e-6)
  # The distance-drop transform exposes its current factor on the learning rate.
  tx = transforms.scale_by_distance_drops((1.0, 2.0), factor=0.5)
  state = tx.init(w0)
  assert float(state.scale) == 1.0
  _, state = tx.update(w, state, w)
  assert int(state.num_drops) == 1 and float(state.scale) == 0.5


def test_the_workdir_check_names_each_changed_key(tmp_path):
  config = tiny_config("sb")
  assert training.config_changes(config, str(tmp_path)) == []  # no saved config yet
  training.check_and_save_config(config, str(tmp_path))
  assert training.config_changes(config, str(tmp_path)) == []
  changed = tiny_config("sb", seed=3, progress_bar=True)  # progress_bar may change on resume
  assert training.config_changes(changed, str(tmp_path)) == ["seed: 0 -> 3"]
  with pytest.raises(ValueError, match=r"different config \(seed: 0 -> 3\)"):
    training.check_and_save_config(changed, str(tmp_path))
