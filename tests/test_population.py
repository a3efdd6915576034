"""Populations: member i of a population equals the single run of its seed.

Each case trains a population of two seeds and the single run of the second
seed for 20 updates and compares the final parameters, optimizer state and
batch statistics (rel 1e-5: vmapped matrix products may round differently).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigbatch_jax import training
from bigbatch_jax.training import population, population_spec
from bigbatch_jax.training import spec as spec_lib
from experiments.configs import default
from tests import tiny_run
from tests.test_training import tiny_config

SEEDS = (4, 7)


def equivalence_config(variant, **overrides):
  """A tiny F1 (one hidden layer of 16) for 20 updates, no evaluation until the end."""
  base = {
    "model_options.hidden": 16,
    "model_options.depth": 1,
    "log_every_steps": 5,
    "checkpoint_every_steps": 0,
    "eval_every_epochs": 100.0,
    "eval_on_train": False,
    "regime.epochs": 3.0,
    "stop_after_steps": 20,
  }
  return tiny_config(variant, **{**base, **overrides})


def _final_state(workdir):
  state = training.Checkpointer(os.path.join(workdir, "checkpoints")).restore_raw()
  return {k: state[k] for k in ("params", "batch_stats", "opt_state")}


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def assert_member_equals_single(tmp_path, variant, unchecked=(), **overrides):
  """Member 1 of a population ends as the single run of its seed (but the ``unchecked`` leaves)."""
  pop_dir, single_dir = str(tmp_path / "population"), str(tmp_path / "single")
  training.train_and_evaluate(equivalence_config(variant, seeds=SEEDS, **overrides), pop_dir)
  training.train_and_evaluate(equivalence_config(variant, seed=SEEDS[1], **overrides), single_dir)
  members, single = _final_state(pop_dir), _final_state(single_dir)
  assert training.Checkpointer(os.path.join(single_dir, "checkpoints")).latest_step() == 20
  member = population.take_member(members, 1)
  other = population.take_member(members, 0)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(member), jax.tree.leaves(single)):
    if not any(part in jax.tree_util.keystr(path) for part in unchecked):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  # The members differ from each other: their own initialization, stream and keys.
  assert not np.allclose(other["params"]["fc1"]["kernel"], member["params"]["fc1"]["kernel"])
  single_losses = [r["loss"] for r in _records(single_dir) if "loss" in r]
  member_losses = [r["loss"] for r in _records(pop_dir) if r.get("member") == 1 and "loss" in r]
  np.testing.assert_allclose(member_losses, single_losses, rtol=1e-5)


# Each case together covers: BN and GBN, multiplicative and white noise, clipping,
# momentum restart, warmup, LARS/LAMB, the kept partial last batch, regime adaptation.
FAST_CASES = {
  "gbn+ra+mult+white+clip+warmup+restart+partial": (
    "lb+linear+gbn+ra+mult+white+clip+warmup",
    {"momentum_restart": True, "partial_last_batch": True, "base_batch_size": 24},
  ),
}
SLOW_CASES = {
  "bn+white+warmup": ("lb+linear+white+warmup", {"warmup_epochs": 1.0}),
  "lars": ("lb+lr+lars", {}),
  "sb": ("sb", {}),
  "gbn": ("lb+lr+gbn", {}),
  "mult": ("lb+mult", {}),
  "white": ("lb+linear+white", {}),
  "clip": ("lb+lr+clip", {}),
  "restart": ("lb+lr", {"momentum_restart": True}),
  # fc1's bias feeds batch norm, so its true gradient is zero and what it gets is
  # float32 rounding, which the vmapped step rounds differently; LAMB's Adam
  # normalisation m / sqrt(v) turns that noise into steps of lr's size (1e-3 apart
  # after 20 updates), carried into bn1's running mean. Every other array agrees,
  # and so do the losses.
  "lamb": ("lb+lr+lamb", {"unchecked": ("['fc1']['bias']", "['bn1']['mean']")}),
  "partial": ("sb", {"partial_last_batch": True, "base_batch_size": 24}),
  "ra": ("lb+lr+gbn+ra", {}),
}


@pytest.mark.parametrize("case", sorted(FAST_CASES))
def test_a_member_equals_the_single_run_of_its_seed(case, tmp_path):
  variant, overrides = FAST_CASES[case]
  assert_member_equals_single(tmp_path, variant, **overrides)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SLOW_CASES))
def test_a_member_equals_the_single_run_of_its_seed_for_each_remedy(case, tmp_path):
  variant, overrides = SLOW_CASES[case]
  assert_member_equals_single(tmp_path, variant, **overrides)


def test_seeds_resolve_to_a_population_or_a_single_run():
  config = default.get_config()
  assert population_spec.member_seeds(config) is None
  config.seeds = 0
  assert population_spec.member_seeds(config) is None
  config.seeds = (2, 0, 5)
  assert population_spec.member_seeds(config) == (2, 0, 5)
  for bad, words in [
    (3, "differs from config.seed=0"),
    ((), "non-empty tuple"),
    ((1, 1), "repeats a seed"),
    ((0, -1), "every seed must be an int >= 0"),
    ("0,1", "non-empty tuple"),
  ]:
    config.seeds = bad
    with pytest.raises(ValueError, match=words):
      population_spec.member_seeds(config)


def _population_step(config, seeds):
  """The real population step of ``config`` on one device, its first state and plan."""
  from bigbatch_jax import data as data_lib
  from bigbatch_jax.training import parallel, setup

  data = spec_lib.load_data(config)
  mesh = parallel.make_mesh(1)
  spec = spec_lib.resolve(config, num_train=data.num_train, num_devices=1)
  plan = spec.plan
  run = setup.set_up_run(spec, mesh, data.num_classes, data.input_shape, seeds=seeds)
  fn = parallel.shard_train_step(
    population.population_train_step, mesh, members=True, **run.step_args
  )
  batches = lambda: data_lib.PopulationBatches(  # noqa: E731
    data, plan.batch_schedule, seeds=seeds, prefetch=0
  )
  return fn, run.state, mesh, plan, batches


def test_a_member_driven_to_nan_is_frozen_and_reported_while_the_others_go_on(tmp_path):
  from bigbatch_jax.training import members as members_lib
  from bigbatch_jax.training import parallel

  config = equivalence_config("lb+lr+gbn")
  results = []
  fn, first, mesh, plan, make_batches = _population_step(config, (0, 1, 2))
  for inject in (False, True):
    state, batches = jax.tree.map(jnp.copy, first), make_batches()
    history = []
    for step in range(4):
      batch = next(batches)
      if inject and step == 2:
        batch["x"][1, 0, 0] = np.nan  # one example of member 1
      state, _ = fn(state, parallel.put_batch(batch, mesh, members=True), {})
      history.append(jax.device_get(state.params))
    results.append((state, history))
  (clean, _), (state, history) = results
  # Members 0 and 2 end identical to the population without the NaN.
  for member in (0, 2):
    jax.tree.map(
      np.testing.assert_array_equal,
      population.take_member(jax.device_get(clean.params), member),
      population.take_member(history[-1], member),
    )
  # Member 1 is frozen at its state before the bad update, and recorded.
  np.testing.assert_array_equal(np.asarray(state.nonfinite_step), [-1, 2, -1])
  jax.tree.map(
    np.testing.assert_array_equal,
    population.take_member(history[1], 1),
    population.take_member(history[-1], 1),
  )
  checkpoints = training.Checkpointer(str(tmp_path / "ckpt"))
  members = members_lib.Members((0, 1, 2), plan, checkpoints, None)
  members.check_state(state)
  assert members.live() == [0, 2]
  report = members.diverged[1]
  assert report["step"] == 2 and report["lr"] == pytest.approx(float(training.lr_schedule(plan)(2)))
  assert "non-finite loss and gradient at step 2" in report["error"]
  # The "stop" policy ends the run only when every member has diverged.
  all_bad = state.replace(nonfinite_step=np.array([3, 2, 5], np.int32))
  all_bad = all_bad.replace(nonfinite_kind=np.array([1, 3, 2], np.int32))
  with pytest.raises(FloatingPointError, match="every member of the population diverged"):
    members.check_state(all_bad)


def test_a_split_population_gives_each_seed_a_single_runs_workdir(tmp_path):
  from bigbatch_jax.diagnostics import runs
  from bigbatch_jax.training import members as members_lib
  from bigbatch_jax.training.workdir import config_changes

  config = equivalence_config("lb+lr+gbn", seeds=SEEDS, stop_after_steps=None, num_epochs=1.0)
  workdir = str(tmp_path / "population")
  summary = training.train_and_evaluate(config, workdir)
  assert [m["seed"] for m in summary["members"]] == list(SEEDS)
  assert summary["mean_test_accuracy"] == pytest.approx(
    np.mean([m["test_accuracy"] for m in summary["members"]])
  )
  records = _records(workdir)
  assert {(r["member"], r["seed"]) for r in records} == {(0, 4), (1, 7)}
  assert any("test_accuracy" in r for r in records)
  directories = {s: str(tmp_path / f"seed_{s}") for s in SEEDS}
  members_lib.split_population(workdir, directories)
  for member, seed in enumerate(SEEDS):
    directory = directories[seed]
    own = _records(directory)
    assert own and all("member" not in r and "seed" not in r for r in own)
    assert len(own) == sum(r["member"] == member for r in records)
    with open(os.path.join(directory, "summary.json")) as f:
      assert json.load(f) == {k: v for k, v in summary["members"][member].items() if k != "member"}
    single = equivalence_config("lb+lr+gbn", seed=seed, stop_after_steps=None, num_epochs=1.0)
    assert config_changes(single, directory) == []
    run = runs.load_run(directory)
    jax.tree.map(
      np.testing.assert_array_equal,
      run.params,
      population.take_member(_final_state(workdir)["params"], member),
    )


@pytest.mark.slow  # two population runs: about 50 s on two shared cores
def test_steps_per_call_changes_no_record_and_no_checkpoint_of_a_population(tmp_path):
  """Calls end at the steps with a log, an evaluation or a checkpoint (``events.call_length``).

  The periods here fall inside calls of 5 (logs every 8 steps, evaluations
  every 0.7 epoch of 32 steps, checkpoints every 12 steps), so an event taken
  at the end of its call would see a later state.
  """
  runs = {}
  for steps_per_call in (1, 5):
    workdir = str(tmp_path / f"calls_of_{steps_per_call}")
    config = tiny_config(
      "sb",
      seeds=SEEDS,
      steps_per_call=steps_per_call,
      log_every_steps=8,
      eval_every_epochs=0.7,
      checkpoint_every_steps=12,
      max_checkpoints_to_keep=10,
      eval_on_train=False,
    )
    training.train_and_evaluate(config, workdir)
    checkpoints = training.Checkpointer(os.path.join(workdir, "checkpoints"))
    runs[steps_per_call] = (checkpoints.all_steps(), tiny_run.read_result(workdir))
  (steps_one, result_one), (steps_five, result_five) = runs[1], runs[5]
  assert steps_one == steps_five == [12, 24, 36, 48, 60, 64]
  evaluated = [r["step"] for r in result_one[1] if "test_accuracy" in r and r["member"] == 0]
  assert evaluated == [23, 45, 64]
  tiny_run.assert_identical(result_one, result_five)
