"""The validation-tuned protocol of the Table 1 driver (experiments/table1/lr_selection.py)."""

import json
import math
import os
import pathlib

import pytest

from bigbatch_jax.configs.common import grid_config, override
from bigbatch_jax.training import population_spec
from bigbatch_jax.training.workdir import config_changes
from experiments import table1
from experiments.configs import default, f1
from experiments.table1 import lr_selection
from experiments.table1 import rows as rows_lib
from tests.test_table1 import tiny_config

LRS = (0.025, 0.05, 0.1, 0.2, 0.4)


def read(*path):
  return json.loads(pathlib.Path(*path).read_text())


def test_the_best_mean_wins_not_one_seeds_best():
  # Seed 0 alone would pick 0.4 (95), seed 1 alone 0.025 (90); the means pick 0.1 (86).
  accuracies = {
    0.025: [70.0, 90.0],
    0.05: [80.0, 85.0],
    0.1: [87.0, 85.0],
    0.2: [60.0, 61.0],
    0.4: [95.0, 20.0],
  }
  record = lr_selection.choose(LRS, accuracies)
  assert record["selected_lr"] == 0.1
  assert record["validation_accuracy_mean"] == [80.0, 82.5, 86.0, 60.5, 57.5]
  assert record["validation_accuracy_per_seed"][4] == [95.0, 20.0]
  assert record["ties"] == [0.1] and record["edge"] is None


def test_ties_edges_and_diverged_rates_are_reported():
  tied = {lr: [50.0, 50.0] for lr in LRS} | {0.2: [70.0, 60.0], 0.4: [60.0, 70.0]}
  record = lr_selection.choose(LRS, tied)
  assert record["ties"] == [0.2, 0.4] and record["selected_lr"] == 0.2 and record["edge"] is None
  # A rate with a diverged seed is not eligible, however good its other seed.
  edge = {lr: [50.0, 50.0] for lr in LRS} | {0.025: [60.0, 60.0], 0.2: [99.0, None]}
  record = lr_selection.choose(LRS, edge)
  assert record["selected_lr"] == 0.025 and record["edge"] == "lowest"
  assert record["validation_accuracy_mean"][3] is None
  high = lr_selection.choose(LRS, {lr: [lr, lr] for lr in LRS})
  assert high["edge"] == "highest" and "the grid's highest rate" in lr_selection.describe(high)
  with pytest.raises(ValueError, match="no learning rate of the grid"):
    lr_selection.choose(LRS, {lr: [None, 1.0] for lr in LRS})


def test_a_grid_with_dotted_keys_survives_copies_json_and_the_resume_check(tmp_path):
  config = default.get_config()
  grid = {"regime.weight_decay": (0.0, 1e-4), "regime.lr": (0.1, 0.2)}  # not in sorted order
  override(config, {"population_grid": grid})
  # A plain dict here raised ValueError; copies of copies keep the keys and their order.
  copy = config.copy_and_resolve_references().copy_and_resolve_references()
  assert list(population_spec.grid_values(copy).items()) == list(grid.items())
  assert json.loads(copy.to_json())["population_grid"] == {k: list(v) for k, v in grid.items()}
  (tmp_path / "config.json").write_text(copy.to_json())
  assert config_changes(config, str(tmp_path)) == []
  config.population_grid = grid_config({**grid, "regime.lr": (0.1, 0.3)})
  assert config_changes(config, str(tmp_path)) != []


def test_the_selection_grid_is_the_rows_default_rate_on_the_validation_split():
  config = rows_lib.variant_config(f1, "lb+lamb", "quick")
  selection = lr_selection.selection_config(config)
  assert selection.validation_fraction == 0.1 and config.validation_fraction == 0.0
  assert population_spec.grid_values(selection) == {
    "regime.lr": tuple(0.01 * f for f in (0.25, 0.5, 1, 2, 4))
  }
  assert selection.seeds == lr_selection.SELECTION_SEEDS and config.seeds is None
  grow = tiny_config("sb+grow")
  grow.batch_growth_max = 512
  assert lr_selection.selection_config(grow, num_train=512).batch_growth_max == 461


@pytest.fixture(scope="module")
def recipes_dir(tmp_path_factory):
  """The validation-tuned driver on SB and LARS (tiny, 2 seeds), run twice."""
  workdir = str(tmp_path_factory.mktemp("recipes"))
  configs = {"sb": tiny_config("sb"), "lb+lars": tiny_config("lb+lars")}
  override(
    configs["lb+lars"], {**rows_lib.ROW_SETTINGS["lb+lars"], "regime.poly_warmup_epochs": 0.25}
  )
  calls = []

  def train(config, directory):
    calls.append((directory, config.regime.lr, config.validation_fraction))
    return table1.train_and_evaluate(config, directory)

  run = dict(
    train_fn=train, echo=lambda line: None, hessian=False, covariance=False, select_lr=True,
    num_train=512,
  )  # fmt: skip
  rows = table1.run_table(configs, (0, 1), workdir, **run)
  first = list(calls)
  table1.run_table(configs, (0, 1), workdir, **run)  # resumed: nothing runs again
  assert calls == first
  return workdir, rows, first


@pytest.mark.slow
def test_the_driver_selects_on_validation_then_runs_the_seeds_at_the_selected_lr(recipes_dir):
  workdir, _, calls = recipes_dir
  payload = read(workdir, "table1.json")
  by = {r["variant"]: r for r in payload["rows"]}
  for row, centre in (("sb", 0.1), ("lb+lars", 10.0)):
    record = by[row]["lr_selection"]
    added = [lr for extension in record["extensions"] for lr in extension]
    grid_lrs = [centre * f for f in lr_selection.LR_FACTORS]
    assert record["lrs"] == pytest.approx(sorted(grid_lrs + added))
    means = record["validation_accuracy_mean"]
    assert record["selected_lr"] == record["lrs"][means.index(max(means))]
    assert len(record["validation_accuracy_per_seed"][0]) == len(lr_selection.SELECTION_SEEDS)
    # The grid trained on the validation split; the seeds at the selected rate on all of it.
    grid = [c for c in calls if os.path.basename(c[0]) == "grid" and row in c[0]]
    assert len(grid) == 1 and grid[0][2] == 0.1
    seeds = [c for c in calls if c[0].startswith(os.path.join(workdir, row, ""))]
    assert seeds and all(lr == record["selected_lr"] and f == 0.0 for _, lr, f in seeds)
    summary = read(workdir, row, "seed_0", "summary.json")
    assert summary["evaluated_split"] == "test"
  table = pathlib.Path(workdir, "table1.md").read_text()
  assert "selected lr" in table and "Learning rates selected on a validation split" in table
  assert "lb+lars: validation accuracy (%) by lr" in table
  assert payload["meta"]["lr_selection"]["factors"] == list(lr_selection.LR_FACTORS)


def fake_grid_train(accuracy_of, calls):
  """A train_fn for the selection populations: each member's validation accuracy is
  ``accuracy_of(lr)`` (None: diverged); writes the files a finished run leaves."""

  def train(config, directory):
    lrs = population_spec.grid_values(config)["regime.lr"]
    calls.append((os.path.basename(directory), lrs, config.validation_fraction))
    members = [
      {"hyperparameters": {"regime.lr": lr}, "test_accuracy": accuracy_of(lr)}
      for lr in lrs
      for _ in config.seeds
    ]
    summary = {"finished": True, "evaluated_split": "validation", "members": members}
    os.makedirs(directory)
    pathlib.Path(directory, "config.json").write_text(config.to_json())
    pathlib.Path(directory, "summary.json").write_text(json.dumps(summary))
    return summary

  return train


def select(workdir, accuracy_of, calls):
  config = default.get_config()  # regime.lr 0.1: the grid is 0.025 ... 0.4
  train = fake_grid_train(accuracy_of, calls)
  return lr_selection.select_lr("sb", config, str(workdir), train, echo=lambda line: None)


def test_a_best_rate_at_the_grids_end_extends_the_grid_beyond_it(tmp_path):
  calls = []
  record = select(tmp_path, lambda lr: 80.0 - abs(math.log2(lr / 0.00625)), calls)
  assert [(name, lrs) for name, lrs, _ in calls] == [
    ("grid", pytest.approx((0.025, 0.05, 0.1, 0.2, 0.4))),
    ("grid_lowest_1", pytest.approx((0.00625, 0.0125))),
    ("grid_lowest_2", pytest.approx((0.0015625, 0.003125))),
  ]
  assert all(fraction == lr_selection.VALIDATION_FRACTION for *_, fraction in calls)
  assert record["selected_lr"] == pytest.approx(0.00625) and record["edge"] is None
  assert [pytest.approx(e) for e in record["extensions"]] == [
    [0.00625, 0.0125],
    [0.0015625, 0.003125],
  ]
  assert record["lrs"] == sorted(record["lrs"]) and len(record["lrs"]) == 9
  # Rerun: every population is read back, none trained again.
  assert select(tmp_path, lambda lr: 0.0, calls) == record and len(calls) == 3


def test_an_end_still_best_after_the_last_extension_is_reported_as_the_edge(tmp_path):
  calls = []
  record = select(tmp_path / "up", lambda lr: lr, calls)
  assert [name for name, *_ in calls] == ["grid", "grid_highest_1", "grid_highest_2"]
  assert record["selected_lr"] == pytest.approx(6.4) and record["edge"] == "highest"
  assert "the grid's highest rate" in lr_selection.describe(record)
  # Rates beyond the end that diverge end the extension: the end is then inside.
  calls = []
  record = select(tmp_path / "diverge", lambda lr: None if lr > 0.4 else lr, calls)
  assert [name for name, *_ in calls] == ["grid", "grid_highest_1"]
  assert record["selected_lr"] == 0.4 and record["edge"] is None


def small_sb():
  config = tiny_config("sb")
  config.regime.epochs = 0.5
  config.regime.drop_epochs = ()
  config.eval_every_epochs = 0.5  # one evaluation, at the end
  config.log_every_steps = 8
  return config


@pytest.mark.slow  # a selection population and a run: about 45 s on two shared cores
def test_one_row_one_seed_selects_then_trains_at_the_selected_lr(tmp_path):
  rows = table1.run_table(
    {"sb": small_sb()}, (0,), str(tmp_path), echo=lambda line: None, hessian=False,
    covariance=False, select_lr=True, num_train=512,
  )  # fmt: skip
  record = rows[0]["lr_selection"]
  means = record["validation_accuracy_mean"]
  assert record["selected_lr"] == record["lrs"][means.index(max(means))]
  grid = read(tmp_path, "lr_selection", "sb", "grid", "summary.json")
  assert grid["evaluated_split"] == "validation" and len(grid["members"]) == 10
  saved = read(tmp_path, "sb", "seed_0", "config.json")
  assert saved["regime"]["lr"] == record["selected_lr"] and saved["validation_fraction"] == 0.0


@pytest.mark.slow
def test_without_populations_each_grid_point_is_its_own_run_with_the_same_result(tmp_path):
  common = dict(echo=lambda line: None, hessian=False, covariance=False, select_lr=True)
  common["num_train"] = 512
  together = table1.run_table({"sb": small_sb()}, (0,), str(tmp_path / "p"), **common)
  apart = table1.run_table(
    {"sb": small_sb()}, (0,), str(tmp_path / "s"), population=False, **common
  )
  for lr in apart[0]["lr_selection"]["lrs"]:
    for seed in lr_selection.SELECTION_SEEDS:
      assert (tmp_path / "s" / "lr_selection" / "sb" / f"lr_{lr:g}" / f"seed_{seed}").is_dir()
  a, b = together[0]["lr_selection"], apart[0]["lr_selection"]
  assert a["selected_lr"] == b["selected_lr"]
  for x, y in zip(
    a["validation_accuracy_per_seed"], b["validation_accuracy_per_seed"], strict=True
  ):
    assert x == pytest.approx(y)
