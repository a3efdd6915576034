"""The Table 1 driver end to end on tiny synthetic runs: outputs, claims, resume, paper numbers,
flags."""

import copy
import json
import os
import pathlib
import shutil
import subprocess
import types

import numpy as np
import pytest

from bigbatch_jax import training
from experiments import table1
from experiments.configs import default, f1
from experiments.table1 import paper_claims
from experiments.table1 import rows as rows_lib
from tests import tiny_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("sb", "sb@2x", "lb+lr+gbn+ra")
SEEDS = (0, 1)


def tiny_config(row):
  """A tiny F1 on synthetic data: base batch 16, large 64 (r = 4), ghost 16, 1 epoch."""
  variant, modifier = rows_lib.split_row(row)
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
  rows_lib.apply_modifier(config, modifier)
  table1.schedule_records(config, num_train=512)
  return config


class CountingTrain:
  """train_and_evaluate that counts its calls."""

  def __init__(self):
    self.calls = []

  def __call__(self, config, workdir):
    row = os.path.basename(os.path.dirname(workdir))  # WORKDIR/ROW/seed_N: sb@2x's variant is sb
    self.calls.append((row, config.seed))
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
    "updates_to_sb", "time_to_sb_s", "covariance_ratio", "curves",
  }  # fmt: skip
  for row in payload["rows"]:
    assert required <= set(row), required - set(row)
    assert row["seeds"] == list(SEEDS)
    assert 0 <= row["test_accuracy_mean"] <= 100
    assert row["test_accuracy_std"] >= 0 and row["weight_distance"] > 0
    assert "paper_accuracy" not in row  # synthetic data is not the paper's MNIST
    assert row["top_hessian_eigenvalue"] > 0  # the sharpness column (Keskar et al.)
  sb, sb2, ra = payload["rows"]
  assert ra["updates"] == sb["updates"] == 32  # 512 examples, 1 epoch at 16; RA: 4 epochs at 64
  assert (sb["epochs"], sb2["epochs"], ra["epochs"]) == (1.0, 2.0, 4.0)
  assert sb2["updates"] == 64
  # SB reaches its own final accuracy at its last evaluation at the latest.
  assert 0 < sb["updates_to_sb"] <= sb["updates"] and sb["time_to_sb_s"] > 0
  # Hoffer eq. 6 at w0: 4x the batch at twice the lr (square-root scaling) -> about SB's trace.
  assert sb["covariance_ratio"] == 1.0 and 0.5 < ra["covariance_ratio"] < 2.0
  names = {c["name"] for c in payload["claims"]}
  assert any(n.startswith("SB converged") for n in names)
  assert any(n.startswith("+RA closes the gap") for n in names)
  for claim in payload["claims"]:
    assert set(claim) == {"name", "holds", "numbers", "test"} and isinstance(claim["holds"], bool)
  table = pathlib.Path(workdir, "table1.md").read_text()
  assert "| sb | SB |" in table and "| lb+lr+gbn+ra | +RA |" in table and "λ_max" in table
  assert "| sb@2x |" in table and "tr cov / SB" in table
  assert "paper (%)" not in table and "only on the paper's dataset (tfds:mnist)" in table
  for name in table1.FIGURES:
    size = os.path.getsize(os.path.join(workdir, name))
    assert 1000 < size < 150_000, (name, size)


def test_figures_are_drawn_from_the_json_alone(table_dir, tmp_path):
  from experiments.table1 import figures

  shutil.copy(os.path.join(table_dir[0], "table1.json"), tmp_path)
  paths = figures.plot_all(str(tmp_path))  # no run directory here
  assert [os.path.basename(p) for p in paths] == list(table1.FIGURES)


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
  assert all("covariance_ratio" in r for r in rows)  # cached: measured once
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
  with pytest.raises(ValueError, match="unknown modifier '3x'; valid: 2x, r4"):
    table1.parse_variants("sb,sb@3x")
  assert table1.parse_variants("default") == list(table1.DEFAULT_VARIANTS)
  assert set(table1.parse_variants("reviewers")) <= set(table1.DEFAULT_VARIANTS)
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
  table1.schedule_records(quick, num_train=8000)
  epochs = f1.TABLE1_QUICK["epochs"]
  assert quick.eval_every_epochs == pytest.approx(epochs * 16 / table1.EVALS_PER_RUN)
  # Modifiers: @2x doubles the regime's length and drops, @r4 sets B_L = 4 B_S.
  sb, sb2 = (table1.variant_config(f1, v, "quick") for v in ("sb", "sb@2x"))
  assert sb2.variant == "sb" and sb2.regime.epochs == 2 * sb.regime.epochs
  assert sb2.regime.drop_epochs == tuple(2 * e for e in sb.regime.drop_epochs)
  r4 = table1.variant_config(f1, "lb+linear+white@r4", "quick")
  assert (r4.variant, r4.large_batch_size) == ("lb+linear+white", 4 * r4.base_batch_size)


def test_paper_numbers_on_mnist_given_any_way():
  def data(n_train, n_test, shape, classes=10):
    return types.SimpleNamespace(
      x_train=np.zeros((1, *shape)), num_train=n_train, num_test=n_test, num_classes=classes
    )

  assert rows_lib.is_mnist("tfds:mnist", None)
  assert rows_lib.is_mnist("npz:/data/mnist.npz", data(60000, 10000, (28, 28, 1)))
  assert not rows_lib.is_mnist("npz:/data/fashion.npz", data(60000, 10000, (32, 32, 3)))
  assert not rows_lib.is_mnist("npz:/data/small.npz", data(6000, 1000, (28, 28)))
  assert not rows_lib.is_mnist("mnist1d", data(8000, 2000, (40,)))


def test_command_line_applies_overrides_to_every_variant(tmp_path):
  workdir = tmp_path / "cli"
  command = tiny_run.table1_command(
    workdir, "--config.regime.epochs=1.0", "--config.regime.drop_epochs=(0.5,)", "--hessian=false"
  )
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


# Per-seed accuracies (%) at which every claim holds; each violation below breaks one.
GOOD = {
  "sb": [80.0, 80.5, 81.0],
  "sb@2x": [80.2, 80.7, 81.2],
  "lb": [70.0, 70.5, 71.0],
  "lb+lr": [73.0, 73.5, 74.0],
  "lb+lr+gbn": [73.2, 73.7, 74.2],
  "lb+lr+gbn+ra": [80.4, 80.9, 81.4],
  "lb+lr+ra": [80.0, 80.5, 81.0],
  "lb+mult": [60.0, 60.5, 61.0],
  "lb+mult+ra": [79.8, 80.3, 80.8],
  "lb+linear": [60.0, 60.5, 61.0],
  "lb+linear+white": [63.0, 63.5, 64.0],
  "lb+linear@r4": [70.0, 70.5, 71.0],
  "lb+linear+white@r4": [73.0, 73.5, 74.0],
}
DISTANCE = {"sb": 30.0, "lb": 10.0, "lb+lr": 15.0, "lb+lr+gbn": 15.0, "lb+lr+gbn+ra": 35.0}
COVARIANCE = {"sb": 1.0, "lb": 1 / 16, "lb+lr": 1.0, "lb+mult": 1.0}


def claim_rows(template, accuracy=None, distance=None, r2=None, covariance=None):
  """Rows shaped as the driver writes them (from its ``template`` row), with these numbers."""
  out = []
  for variant, per_seed in (accuracy or GOOD).items():
    row = copy.deepcopy(template)
    row.update(
      variant=variant,
      test_accuracy_per_seed=per_seed,
      test_accuracy_mean=float(np.mean(per_seed)),
      test_accuracy_std=float(np.std(per_seed, ddof=1)),
      batch_size=64 if variant.startswith("sb") else 1024,
      weight_distance=(distance or DISTANCE).get(variant, 20.0),
      weight_distance_r2=(r2 or {}).get(variant, 0.95),
      covariance_ratio=(covariance or COVARIANCE).get(variant),
    )
    out.append(row)
  return out


def shifted(*names, by):
  return {**GOOD, **{n: [a + by for a in GOOD[n]] for n in names}}


RA_ROWS = ("lb+lr+gbn+ra", "lb+lr+ra", "lb+mult+ra")  # moved together: only the gap to SB changes


# claim name prefix -> rows (keyword arguments of claim_rows) that violate it.
VIOLATIONS = {
  "SB converged": {"accuracy": shifted("sb@2x", by=3.0)},
  # LB within 0.5 points of SB; +LR and +GBN keep their places above it.
  "LB below SB": {"accuracy": shifted("lb", "lb+lr", "lb+lr+gbn", by=9.5)},
  "+LR above LB": {"accuracy": shifted("lb+lr", by=-3.0)},
  "lb+lr+gbn not below lb+lr": {"accuracy": shifted("lb+lr+gbn", by=-3.0)},
  "+RA closes the gap": {"accuracy": shifted(*RA_ROWS, by=-5.0)},
  "lb+lr+gbn+ra not below lb+lr+ra": {"accuracy": shifted("lb+lr+ra", "lb+mult+ra", by=3.0)},
  "+mult+RA similar": {"accuracy": shifted("lb+mult+ra", by=-5.0)},
  "White noise improves linear scaling at r = 16": {
    "accuracy": shifted("lb+linear+white", by=-3.0)
  },
  "White noise improves linear scaling at r = 4": {
    "accuracy": shifted("lb+linear+white@r4", by=-3.0)
  },
  "||w - w0|| grows linearly": {"r2": {"lb+lr": 0.5}},
  "LB, +LR and +GBN end short": {"distance": {**DISTANCE, "lb+lr+gbn": 31.0}},
  "Update covariance at w0": {"covariance": {**COVARIANCE, "lb": 1.0}},
}


def by_prefix(checks):
  out = {}
  for prefix in VIOLATIONS:
    (match,) = [c for c in checks if c["name"].startswith(prefix)]
    out[prefix] = match
  return out


def test_each_claim_holds_on_good_numbers_and_flips_when_they_violate_it(table_dir):
  template = table1.aggregate(table_dir[0], ["sb"], SEEDS)[0]  # a row as the driver makes it
  good = by_prefix(table1.claims(claim_rows(template)))
  assert all(c["holds"] for c in good.values()), [c for c in good.values() if not c["holds"]]
  for prefix, violation in VIOLATIONS.items():
    bad = by_prefix(table1.claims(claim_rows(template, **violation)))
    flipped = [p for p in VIOLATIONS if not bad[p]["holds"]]
    assert flipped == [prefix], (prefix, flipped)
  # Overshooting SB is a failed claim that says why, never "holds".
  over = by_prefix(table1.claims(claim_rows(template, accuracy=shifted(*RA_ROWS, by=5.0))))
  assert [p for p in VIOLATIONS if not over[p]["holds"]] == ["+RA closes the gap"]
  ra = over["+RA closes the gap"]
  assert (
    "SB undertrained" in ra["name"] and "SB undertrained" not in good["+RA closes the gap"]["name"]
  )
  assert ra["numbers"]["p_value"] < 0.05 and ra["numbers"]["difference"] == pytest.approx(5.4)
  # The p-value is Welch's: scipy's ttest_ind with unequal variances.
  n = good["LB below SB"]["numbers"]
  assert n["p_value"] == pytest.approx(paper_claims.welch_p(GOOD["sb"], GOOD["lb"]))
  assert paper_claims.welch_p([1.0], [2.0, 3.0]) is None


def test_recipes_set_builds_a_plan_for_every_recipe_in_both_protocols():
  variants = rows_lib.parse_variants("recipes")
  assert variants == list(rows_lib.VARIANT_SETS["recipes"]) and "lb+lars" in variants
  for protocol in ("clean", "reference", "reference-fitted"):
    for variant in variants:
      config = rows_lib.variant_config(f1, variant, "quick", {"protocol": protocol})
      config.batch_growth_max = 16000  # what the driver sets for "grow"
      plan = training.make_plan(config, num_train=16000, num_devices=1)
      # The reference runs LB as run_experiments.sh does: at half the large batch.
      lb = 512 if protocol == "reference" and variant == "lb" else 1024
      assert plan.batch_size == (64 if variant == "sb" else lb)
      restarts = protocol != "clean" and "lamb" not in variant
      assert bool(plan.momentum_restart_steps) == restarts
  assert rows_lib.LABELS["lb+lars"] == "LARS" and "lb+lars" not in rows_lib.DEFAULT_VARIANTS


def test_every_row_gets_welch_p_against_sb_and_lb_in_json_and_table(table_dir):
  from scipy import stats

  from experiments.table1.aggregate import p_values_against

  _, rows = table_dir
  by = {r["variant"]: r for r in rows}
  expected = stats.ttest_ind(
    by["lb+lr+gbn+ra"]["test_accuracy_per_seed"], by["sb"]["test_accuracy_per_seed"],
    equal_var=False,
  ).pvalue  # fmt: skip
  assert by["lb+lr+gbn+ra"]["p_vs_sb"] == pytest.approx(expected)
  assert by["sb"]["p_vs_sb"] is None  # not against itself
  assert all(r["p_vs_lb"] is None for r in rows)  # this table has no LB row
  lb = {"variant": "lb", "test_accuracy_per_seed": [70.0, 71.0, 72.0]}
  grow = {"variant": "lb+grow", "test_accuracy_per_seed": [70.5, 71.5, 69.0]}
  sb = {"variant": "sb", "test_accuracy_per_seed": [80.0, 81.0, 79.5]}
  p = p_values_against(grow, {"sb": sb, "lb": lb, "lb+grow": grow})
  welch = stats.ttest_ind([70.5, 71.5, 69], [70, 71, 72], equal_var=False).pvalue
  assert p["p_vs_lb"] == pytest.approx(welch)
  assert p["p_vs_sb"] == pytest.approx(
    stats.ttest_ind([70.5, 71.5, 69], [80, 81, 79.5], equal_var=False).pvalue
  )
  table = pathlib.Path(table_dir[0], "table1.md").read_text()
  assert "| p vs SB | p vs LB |" in table
