"""The Table 1 driver end to end on tiny synthetic runs: outputs, resume, paper numbers, flags."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from bigbatch_jax import training
from experiments import table1
from experiments.configs import default, f1

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("sb", "lb+lr+gbn+ra")
SEEDS = (0, 1)


def tiny_config(variant):
  """A tiny F1 on synthetic data: base batch 16, large 64 (r = 4), ghost 16, 1 epoch."""
  config = default.get_config()
  config.variant = variant
  config.dataset = "synthetic"
  config.model = "f1"
  config.model_options.hidden = 16
  config.model_options.depth = 2
  config.base_batch_size = 16
  config.large_batch_size = 64
  config.regime.epochs = 1.0
  config.regime.drop_epochs = (0.5,)
  config.eval_on_train = False
  config.eval_batch_size = 64
  config.checkpoint_every_steps = 0
  config.progress_bar = False
  table1.schedule_records(config, num_train=512)
  return config


class CountingTrain:
  """train_and_evaluate that counts its calls."""

  def __init__(self):
    self.calls = []

  def __call__(self, config, workdir):
    self.calls.append((config.variant, config.seed))
    return training.train_and_evaluate(config, workdir)


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory):
  """One driver run of 2 variants x 2 seeds, shared by the tests below."""
  workdir = str(tmp_path_factory.mktemp("table1"))
  train = CountingTrain()
  configs = {v: tiny_config(v) for v in VARIANTS}
  rows = table1.run_table(
    configs, SEEDS, workdir, paper_accuracy=f1.PAPER_ACCURACY, paper_dataset="tfds:mnist",
    train_fn=train, echo=lambda line: None,
  )  # fmt: skip
  assert sorted(train.calls) == sorted((v, s) for v in VARIANTS for s in SEEDS)
  return workdir, rows


def test_writes_the_table_json_and_figures(table_dir):
  workdir, _ = table_dir
  with open(os.path.join(workdir, "table1.json")) as f:
    payload = json.load(f)
  assert [r["variant"] for r in payload["rows"]] == list(VARIANTS)
  required = {
    "variant", "test_accuracy_mean", "test_accuracy_std", "seeds", "updates", "epochs",
    "wall_time_s", "weight_distance", "weight_distance_slope", "weight_distance_r2",
  }  # fmt: skip
  for row in payload["rows"]:
    assert required <= set(row), required - set(row)
    assert row["seeds"] == list(SEEDS)
    assert 0 <= row["test_accuracy_mean"] <= 100
    assert row["test_accuracy_std"] >= 0 and row["weight_distance"] > 0
    assert "paper_accuracy" not in row  # synthetic data is not the paper's MNIST
    assert row["top_hessian_eigenvalue"] > 0  # the sharpness column (Keskar et al.)
  sb, ra = payload["rows"]
  assert ra["updates"] == sb["updates"] == 32  # 512 examples, 1 epoch at 16; RA: 4 epochs at 64
  assert (sb["epochs"], ra["epochs"]) == (1.0, 4.0)
  assert {c["claim"] for c in payload["claims"]} >= {"+RA back to SB within the spread or better"}
  table = pathlib.Path(workdir, "table1.md").read_text()
  assert "| sb | SB |" in table and "| lb+lr+gbn+ra | +RA |" in table and "λ_max" in table
  assert "paper (%)" not in table and "only on the paper's dataset (tfds:mnist)" in table
  for name in table1.FIGURES:
    size = os.path.getsize(os.path.join(workdir, name))
    assert 1000 < size < 150_000, (name, size)


def test_a_second_call_runs_nothing_and_shows_paper_numbers_on_their_dataset(table_dir):
  workdir, _ = table_dir
  summary = os.path.join(workdir, "sb", "seed_0", "summary.json")
  before = os.path.getmtime(summary)
  train = CountingTrain()
  configs = {v: tiny_config(v) for v in VARIANTS}
  rows = table1.run_table(
    configs, SEEDS, workdir, paper_accuracy={"sb": 98.27}, paper_dataset="synthetic",
    train_fn=train, echo=lambda line: None,
  )  # fmt: skip
  assert train.calls == []
  assert os.path.getmtime(summary) == before
  assert rows[0]["paper_accuracy"] == 98.27 and rows[1]["paper_accuracy"] is None
  assert "paper (%)" in pathlib.Path(workdir, "table1.md").read_text()


def test_an_unfinished_run_is_run_again_and_a_changed_config_refused(table_dir, tmp_path):
  workdir = str(tmp_path / "copy")
  shutil.copytree(table_dir[0], workdir)
  os.remove(os.path.join(workdir, "sb", "seed_1", "summary.json"))  # as if killed at the end
  train = CountingTrain()
  configs = {v: tiny_config(v) for v in VARIANTS}
  table1.run_table(configs, SEEDS, workdir, train_fn=train, echo=lambda line: None)
  assert train.calls == [("sb", 1)]
  changed = {v: tiny_config(v) for v in VARIANTS}
  changed["sb"].regime.lr = 0.5
  with pytest.raises(ValueError, match=r"different config \(regime"):
    table1.run_table(changed, SEEDS, workdir, train_fn=train, echo=lambda line: None)


def test_a_diverged_run_is_reported_not_rerun(tmp_path):
  def diverge(config, workdir):
    os.makedirs(workdir, exist_ok=True)
    raise FloatingPointError("non-finite loss or gradient at step 3")

  configs = {"sb": tiny_config("sb")}
  rows = table1.run_table(configs, [0], str(tmp_path), train_fn=diverge, echo=lambda line: None)
  assert rows[0]["diverged_seeds"] == [0] and rows[0]["test_accuracy_mean"] is None
  assert "diverged" in (tmp_path / "table1.md").read_text()
  train = CountingTrain()
  table1.run_table(configs, [0], str(tmp_path), train_fn=train, echo=lambda line: None)
  assert train.calls == []


def test_bad_flags_name_the_value_and_the_choices():
  with pytest.raises(ValueError, match="--seeds='0,x'"):
    table1.parse_seeds("0,x")
  with pytest.raises(ValueError, match="unknown part 'gnb'"):
    table1.parse_variants("sb,lb+gnb")
  with pytest.raises(ValueError, match="--preset='fast'; valid: auto, quick, full"):
    table1.resolve_preset("fast", "mnist1d", "tfds:mnist")
  with pytest.raises(ValueError, match="--variants"):
    table1.variant_config(f1, "sb", "quick", {"variant": "lb"})
  assert table1.parse_seeds("0,1,2") == [0, 1, 2]
  assert table1.resolve_preset("auto", "tfds:mnist", "tfds:mnist") == "full"
  assert table1.resolve_preset("auto", "mnist1d", "tfds:mnist") == "quick"


def test_presets_build_each_variant_and_keep_overrides():
  quick = table1.variant_config(f1, "lb+lr+gbn+ra", "quick", {"model_options.hidden": 8})
  assert quick.variant == "lb+lr+gbn+ra"
  assert quick.model_options.hidden == 8 and quick.model_options.depth == 3
  assert (quick.base_batch_size, quick.large_batch_size) == (64, 1024)
  full = table1.variant_config(f1, "sb", "full")
  assert (full.model_options.hidden, full.regime.epochs) == (512, 50.0)
  # The evaluation period follows each run's own length (RA: r times the epochs).
  table1.schedule_records(quick, num_train=16000)
  assert quick.eval_every_epochs == pytest.approx(20.0 * 16 / table1.EVALS_PER_RUN)


def test_command_line_applies_overrides_to_every_variant(tmp_path):
  workdir = tmp_path / "cli"
  command = [
    sys.executable, "-m", "experiments.table1", f"--workdir={workdir}", "--variants=sb,lb",
    "--seeds=0", "--config.dataset=synthetic", "--config.model_options.hidden=8",
    "--config.base_batch_size=32", "--config.large_batch_size=128",
    "--config.regime.epochs=1.0", "--config.regime.drop_epochs=(0.5,)",
    "--config.progress_bar=False",
  ]  # fmt: skip
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| lb | LB |" in result.stdout
  for variant in ("sb", "lb"):
    with open(workdir / variant / "seed_0" / "config.json") as f:
      config = json.load(f)
    assert config["model_options"]["hidden"] == 8 and config["variant"] == variant
  bad = subprocess.run(
    [*command[:3], "--variants=sb,lb+xx", f"--workdir={workdir}"],
    cwd=REPO, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert bad.returncode != 0 and "unknown part 'xx'" in bad.stderr


def test_recipes_set_builds_a_plan_for_every_recipe_in_both_protocols():
  variants = table1.parse_variants("recipes")
  assert variants == list(table1.VARIANT_SETS["recipes"]) and "lb+lars" in variants
  for protocol in ("clean", "reference"):
    for variant in variants:
      config = table1.variant_config(f1, variant, "quick", {"protocol": protocol})
      config.batch_growth_max = 16000  # what the driver sets for "grow"
      plan = training.make_plan(config, num_train=16000, num_devices=1)
      assert plan.batch_size == (64 if variant == "sb" else 1024)
      restarts = protocol == "reference" and "lamb" not in variant
      assert bool(plan.momentum_restart_steps) == restarts
  assert table1.LABELS["lb+lars"] == "LARS" and "lb+lars" not in table1.DEFAULT_VARIANTS
