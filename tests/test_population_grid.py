"""Populations with a grid: per-member hyperparameters crossed with the seeds.

A member of a grid population equals the single run of its seed with its
values (to float32 tolerance: vmapped products round differently); the
values are arguments of the one compiled step; bad grids are refused with
errors that name the key.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigbatch_jax import training
from bigbatch_jax.training import loop as loop_lib
from bigbatch_jax.training import members as members_lib
from bigbatch_jax.training import population, population_spec
from bigbatch_jax.training import spec as spec_lib
from experiments.configs import common, default
from tests.test_population import _final_state, _records, equivalence_config

# lr x weight decay x multiplicative-noise variance, crossed with one seed: 8 members.
GRID = {
  "regime.lr": (0.02, 0.08),
  "regime.weight_decay": (0.0, 1e-3),
  "mult_noise_variance": (0.5, 2.0),
}


def assert_state_close(member, single):
  """Parameters, optimizer state and statistics to rel 1e-5 (a leaf-less state may differ)."""
  leaves = jax.tree_util.tree_leaves_with_path(member)
  assert len(leaves) == len(jax.tree.leaves(single))
  for (path, a), b in zip(leaves, jax.tree.leaves(single), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def _train_counting_traces(monkeypatch, config, workdir):
  """``train_and_evaluate`` of ``config``: its summary and the member step's trace count."""
  traces = []
  step = population.train_step

  def counted(*args, **kwargs):
    traces.append(1)
    return step(*args, **kwargs)

  monkeypatch.setattr(population, "train_step", counted)
  return training.train_and_evaluate(config, workdir), len(traces)


def test_a_grid_member_equals_the_single_run_with_its_values(tmp_path, monkeypatch):
  variant = "lb+lr+gbn+mult"
  config = equivalence_config(variant, seeds=(4,), population_grid=GRID)
  summary, traces = _train_counting_traces(monkeypatch, config, str(tmp_path / "population"))
  # One trace of the member step (one compilation) serves the 8 members.
  assert traces == 1
  # Member 4 (no key's values in the same order as another's): lr 0.08, weight decay 0
  # (no decay term in the single run's chain), variance 0.5.
  values = {"regime.lr": 0.08, "regime.weight_decay": 0.0, "mult_noise_variance": 0.5}
  single_dir = str(tmp_path / "single")
  training.train_and_evaluate(equivalence_config(variant, seed=4, **values), single_dir)
  members = _final_state(str(tmp_path / "population"))
  assert_state_close(population.take_member(members, 4), _final_state(single_dir))
  # Every member trained with its own values: no two end alike.
  kernels = [population.take_member(members, i)["params"]["fc1"]["kernel"] for i in range(8)]
  assert all(not np.allclose(kernels[i], kernels[j]) for i in range(8) for j in range(i))

  records = _records(str(tmp_path / "population"))
  own = [r for r in records if r["member"] == 4 and "loss" in r]
  assert all(r["hyperparameters"] == values and r["seed"] == 4 for r in own)
  single = [r for r in _records(single_dir) if "loss" in r]
  for key in ("loss", "lr"):
    np.testing.assert_allclose([r[key] for r in own], [r[key] for r in single], rtol=1e-5)
  entry = summary["members"][4]
  assert entry["hyperparameters"] == values and entry["seed"] == 4
  # The scaled rate (sqrt(64 / 16) x 0.08) and the variance are the member's.
  assert entry["lr"] == pytest.approx(0.16) and entry["noise_variance"] == 0.5
  assert summary["population_grid"] == {k: list(v) for k, v in GRID.items()}
  assert "lr" not in summary and "noise_variance" not in summary


SLOW_CASES = {
  # name: (variant, grid, member, its values, overrides)
  "white": (
    "lb+linear+white",
    {"noise_alpha": (1e-5, 1e-3), "noise_gamma": (0.55, 0.3)},
    3,
    {"noise_alpha": 1e-3, "noise_gamma": 0.3},
    {},
  ),
  "lars": (
    "lb+lr+lars",
    {"lars_trust_coefficient": (1e-3, 1e-2), "regime.lr": (0.05, 0.1)},
    2,
    {"lars_trust_coefficient": 1e-2, "regime.lr": 0.05},
    {},
  ),
  # Goyal's warmup and the regime's drops follow each member's base rate.
  "warmup+ra+restart": (
    "lb+linear+gbn+ra+warmup",
    {"regime.lr": (0.01, 0.03)},
    1,
    {"regime.lr": 0.03},
    {"warmup_epochs": 1.0, "momentum_restart": True},
  ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SLOW_CASES))
def test_a_grid_member_equals_the_single_run_for_each_key(case, tmp_path):
  variant, grid, member, values, overrides = SLOW_CASES[case]
  pop_dir, single_dir = str(tmp_path / "population"), str(tmp_path / "single")
  config = equivalence_config(variant, seeds=(4,), population_grid=grid, **overrides)
  training.train_and_evaluate(config, pop_dir)
  training.train_and_evaluate(
    equivalence_config(variant, seed=4, **overrides, **values), single_dir
  )
  members = _final_state(pop_dir)
  assert_state_close(population.take_member(members, member), _final_state(single_dir))
  own = [r for r in _records(pop_dir) if r["member"] == member and "loss" in r]
  single = [r for r in _records(single_dir) if "loss" in r]
  for key in ("loss", "lr"):
    np.testing.assert_allclose([r[key] for r in own], [r[key] for r in single], rtol=1e-5)


def test_a_split_grid_population_gives_each_member_its_single_runs_workdir(tmp_path):
  from bigbatch_jax.training.workdir import config_changes

  grid = {"regime.lr": (0.02, 0.08)}
  # A quarter epoch: 8 updates at B=16, then the final evaluation.
  short = {"stop_after_steps": None, "num_epochs": 0.25}
  config = equivalence_config("sb", seeds=(4, 7), population_grid=grid, **short)
  workdir = str(tmp_path / "population")
  summary = training.train_and_evaluate(config, workdir)
  accuracies = [m["test_accuracy"] for m in summary["members"]]
  assert summary["grid_means"] == [
    {"hyperparameters": {"regime.lr": lr}, "seeds": [4, 7], "mean_test_accuracy": mean}
    for lr, mean in ((0.02, np.mean(accuracies[:2])), (0.08, np.mean(accuracies[2:])))
  ]
  assert [(m["seed"], m["hyperparameters"]["regime.lr"]) for m in summary["members"]] == [
    (4, 0.02),
    (7, 0.02),
    (4, 0.08),
    (7, 0.08),
  ]
  with pytest.raises(ValueError, match="members share seeds, so directories must be a function"):
    members_lib.split_population(workdir, {4: str(tmp_path / "a"), 7: str(tmp_path / "b")})

  def directory(entry):
    return str(tmp_path / f"lr{entry['hyperparameters']['regime.lr']}_seed{entry['seed']}")

  members_lib.split_population(workdir, directory)
  state = _final_state(workdir)
  for entry in summary["members"]:
    where = directory(entry)
    lr = entry["hyperparameters"]["regime.lr"]
    single = equivalence_config("sb", seed=entry["seed"], **short, **{"regime.lr": lr})
    assert config_changes(single, where) == []
    own = _records(where)
    assert own and all("hyperparameters" not in r and "member" not in r for r in own)
    with open(os.path.join(where, "summary.json")) as f:
      saved = json.load(f)
    assert saved["seed"] == entry["seed"] and "hyperparameters" not in saved
    split = training.Checkpointer(os.path.join(where, "checkpoints")).restore_raw()
    jax.tree.map(
      np.testing.assert_array_equal,
      split["params"],
      population.take_member(state["params"], entry["member"]),
    )


def _grid_step(config):
  """The population's compiled call, its first state and one batch of each member."""
  from bigbatch_jax import data as data_lib
  from bigbatch_jax.training import loop, parallel, setup

  data = spec_lib.load_data(config)
  mesh = parallel.make_mesh(1)
  spec = spec_lib.resolve(config, num_train=data.num_train, num_devices=1)
  plan = spec.plan
  grid = population_spec.population_of(config, plan, population_spec.member_seeds(config))
  run = setup.set_up_run(
    spec, mesh, data.num_classes, data.input_shape, seeds=grid.seeds, grid=grid.arrays()
  )
  call = loop.CompiledSteps(run, mesh, data.input_shape, plan, grid.size).get(plan.batch_size, 1)
  batches = data_lib.PopulationBatches(data, plan.batch_schedule, seeds=grid.seeds, prefetch=0)
  batch = parallel.put_batch(next(batches), mesh, members=True)
  return call, run, batch


def test_the_values_are_arguments_of_the_one_compiled_step():
  # SGD's first update from a zero momentum is -lr * sqrt(B / B_S) * (g + wd * w):
  # doubling a member's lr through the same compiled step doubles its update.
  config = equivalence_config("lb+lr", seeds=(4,), population_grid={"regime.lr": (0.02, 0.05)})
  call, run, batch = _grid_step(config)
  first = jax.device_get(run.state.params)
  compiled = call.args[0]  # the executable, called with the values as its third argument

  def update(values):
    state = jax.tree.map(jnp.copy, run.state)
    new, metrics = compiled(state, batch, values)
    moved = jax.tree.map(lambda a, b: np.asarray(a) - b, jax.device_get(new.params), first)
    return moved, np.asarray(metrics["lr"])

  moved, lr = update(run.hyperparameters)
  np.testing.assert_allclose(lr, [0.04, 0.1], rtol=1e-6)
  doubled, lr = update({"regime.lr": jnp.asarray([0.04, 0.1], jnp.float32)})
  np.testing.assert_allclose(lr, [0.08, 0.2], rtol=1e-6)
  kernel = lambda tree: tree["fc2"]["kernel"]  # noqa: E731
  np.testing.assert_allclose(kernel(doubled), 2 * kernel(moved), rtol=1e-5, atol=1e-7)


def _config(**overrides):
  config = default.get_config()
  config.dataset = "synthetic"
  common.override(config, overrides)
  return config


def _population(config):
  plan = training.make_plan(config, 512, 1)
  return population_spec.population_of(config, plan, population_spec.member_seeds(config))


def test_members_cross_the_grid_with_the_seeds():
  config = _config(seeds=(0, 1, 2), population_grid={"regime.lr": (0.03, 0.1, 0.3)})
  members = _population(config)
  assert members.size == 9
  assert members.seeds == (0, 1, 2) * 3
  assert [h["regime.lr"] for h in members.hyperparameters] == [0.03] * 3 + [0.1] * 3 + [0.3] * 3
  np.testing.assert_allclose(members.arrays()["regime.lr"], [0.03] * 3 + [0.1] * 3 + [0.3] * 3)
  # A grid without seeds: one member per value, each of config.seed.
  config = _config(seed=5, population_grid={"regime.lr": (0.1, 0.2), "regime.weight_decay": (0, 1)})
  members = _population(config)
  assert members.seeds == (5,) * 4
  assert [tuple(h.values()) for h in members.hyperparameters] == [
    (0.1, 0.0),
    (0.1, 1.0),
    (0.2, 0.0),
    (0.2, 1.0),
  ]
  assert _population(_config()) is None
  assert _population(_config(seeds=(1, 2))).hyperparameters == ({}, {})


@pytest.mark.parametrize(
  "grid, variant, words",
  [
    ({"regime.lrr": (0.1,)}, "sb", "'regime.lrr', which is not a config key"),
    ({"batch_size": (64, 128)}, "sb", "config.batch_size, which is not per-member"),
    ({"ghost_batch_size": (8,)}, "lb+lr+gbn", "config.ghost_batch_size, which is not per-member"),
    ({"model": ("f1",)}, "sb", "config.model, which is not per-member"),
    ({"regime.epochs": (1.0, 2.0)}, "sb", "config.regime.epochs, which is not per-member"),
    ({"seed": (0, 1)}, "sb", "the population's seed axis: give the seeds as config.seeds"),
    ({"seeds": ((0,),)}, "sb", "the population's seed axis"),
    ({"regime.lr": ()}, "sb", r"\[\'regime.lr\'\]=\(\); valid: a non-empty tuple"),
    ({"regime.lr": 0.1}, "sb", "valid: a non-empty tuple of numbers"),
    ({"regime.lr": (0.1, 0.1)}, "sb", "repeats a value"),
    ({"regime.lr": (0.1, 0.0)}, "sb", "holds 0.0; each value must be > 0"),
    ({"regime.weight_decay": (-1e-4,)}, "sb", "each value must be >= 0"),
    ({"regime.lr": (True,)}, "sb", "holds True; valid: numbers > 0"),
    ({"noise_alpha": (1e-5, 1e-4)}, "lb+lr", r"variant 'lb\+lr' has no 'white' part"),
    ({"mult_noise_variance": (1.0,)}, "lb+lr", "no 'mult' part"),
    ({"lars_trust_coefficient": (1e-3,)}, "lb+lr", "no 'lars' part"),
    ((("regime.lr", (0.1,)),), "sb", "valid: None or a dict of config key"),
  ],
)
def test_a_bad_grid_is_refused_with_the_key_named(grid, variant, words):
  config = _config(variant=variant, seeds=(0, 1), population_grid=grid)
  with pytest.raises(ValueError, match=words):
    _population(config)


def test_a_diverged_grid_member_is_reported_with_its_values_and_learning_rate(tmp_path, capsys):
  config = _config(variant="lb+lr", seeds=(0,), population_grid={"regime.lr": (0.1, 0.4)})
  plan = training.make_plan(config, 512, 1)
  grid = population_spec.population_of(config, plan, population_spec.member_seeds(config))
  members = members_lib.Members(grid, plan, training.Checkpointer(str(tmp_path / "c")), None)
  state = training.TrainState(
    step=np.int32(3),
    params={},
    batch_stats={},
    opt_state=(),
    initial_params={},
    key=jax.random.key(0),
    nonfinite_step=np.array([-1, 2], np.int32),
    nonfinite_kind=np.array([0, 1], np.int32),
    skipped_steps=np.zeros(2, np.int32),
  )
  members.check_state(state)
  assert members.live() == [0]
  assert members.diverged[1]["lr"] == pytest.approx(0.4 * np.sqrt(4096 / 128))
  assert "population member 1 (seed 0, regime.lr=0.4) is frozen" in capsys.readouterr().out


def test_members_that_share_a_seed_read_its_stream():
  from bigbatch_jax import data as data_lib

  config = _config()
  data = spec_lib.load_data(config)
  seeds = (4, 7, 4)
  together = data_lib.PopulationBatches(data, 32, seeds=seeds, prefetch=0)
  alone = {s: data_lib.BatchIterator(data, 32, seed=s, prefetch=0) for s in (4, 7)}
  for _ in range(3):
    batch, own = next(together), {s: next(it) for s, it in alone.items()}
    for member, seed in enumerate(seeds):
      np.testing.assert_array_equal(batch["x"][member], own[seed]["x"])
      np.testing.assert_array_equal(batch["y"][member], own[seed]["y"])


@pytest.mark.slow
def test_a_grid_on_four_devices_in_scanned_calls_equals_it_on_one_device_step_by_step(tmp_path):
  grid = {"regime.lr": (0.02, 0.08), "mult_noise_variance": (0.5, 2.0)}
  states = []
  for devices, steps_per_call in ((4, 4), (1, 1)):
    workdir = str(tmp_path / f"d{devices}")
    config = equivalence_config(
      "lb+lr+gbn+mult",
      seeds=(4, 7),
      population_grid=grid,
      num_devices=devices,
      steps_per_call=steps_per_call,
    )
    training.train_and_evaluate(config, workdir)
    states.append(_final_state(workdir))
  assert_state_close(*states)


@pytest.mark.slow
def test_a_stopped_grid_population_resumes_to_the_uninterrupted_state(tmp_path):
  grid = {"regime.lr": (0.02, 0.08), "regime.weight_decay": (0.0, 1e-3)}
  config = lambda **kw: equivalence_config("lb+lr+gbn", seeds=(4,), population_grid=grid, **kw)  # noqa: E731
  training.train_and_evaluate(config(), str(tmp_path / "whole"))
  resumed = str(tmp_path / "resumed")
  training.train_and_evaluate(config(stop_after_steps=10, checkpoint_every_steps=5), resumed)
  training.train_and_evaluate(config(checkpoint_every_steps=5), resumed)
  whole, again = _final_state(str(tmp_path / "whole")), _final_state(resumed)
  jax.tree.map(np.testing.assert_array_equal, whole, again)
  assert [r["hyperparameters"] for r in _records(resumed) if "loss" in r] == [
    r["hyperparameters"] for r in _records(str(tmp_path / "whole")) if "loss" in r
  ]


def test_the_progress_bar_shows_a_grids_range_of_rates():
  assert loop_lib.lr_text(np.array([0.1, 0.1, 0.1])) == "0.1"
  assert loop_lib.lr_text(np.array([0.025, 0.4, 0.1, 0.025])) == "0.025-0.4"
