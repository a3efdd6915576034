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

from bigbatch_jax import statistics, training
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
    # A population (WORKDIR/ROW/population_S1-S2) trains several seeds in one call.
    self.calls.extend((row, seed) for seed in config.seeds or (config.seed,))
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
    # lambda_max times the squared norm of the layers batch norm makes scale invariant.
    assert row["scale_normalized_sharpness"] > row["top_hessian_eigenvalue"]
  sb, sb2, ra = payload["rows"]
  assert ra["updates"] == sb["updates"] == 32  # 512 examples, 1 epoch at 16; RA: 4 epochs at 64
  assert (sb["epochs"], sb2["epochs"], ra["epochs"]) == (1.0, 2.0, 4.0)
  assert sb2["updates"] == 64
  # SB reaches its own final accuracy at its last evaluation at the latest.
  assert 0 < sb["updates_to_sb"] <= sb["updates"] and sb["time_to_sb_s"] > 0
  # Hoffer eq. 6 at w0: 4x the batch at twice the lr (square-root scaling) -> about SB's trace.
  assert sb["covariance_ratio"] == 1.0 and 0.5 < ra["covariance_ratio"] < 2.0
  # The same with batch norm in training mode on the rows' real batches.
  assert sb["covariance_ratio_training"] == 1.0 and 0.5 < ra["covariance_ratio_training"] < 2.0
  for row in payload["rows"]:
    assert len(row["test_accuracy_per_seed"]) == 2 and len(row["test_accuracy_ci95"]) == 2
  names = {c["name"] for c in payload["claims"]}
  assert any(n.startswith("SB converged") for n in names)
  assert any(n.startswith("+RA closes the gap") for n in names)
  fields = {"outcome", "difference", "ci95", "p_value", "p_holm", "power", "seeds_needed"}
  for claim in payload["claims"]:
    assert fields <= set(claim) and claim["outcome"] in statistics.OUTCOMES
  tested = [c for c in payload["claims"] if c["kind"] != "rule"]
  assert tested and all(c["p_holm"] >= c["p_value"] for c in tested)
  table = pathlib.Path(workdir, "table1.md").read_text()
  assert "| sb | SB |" in table and "| lb+lr+gbn+ra | +RA |" in table and "λ_max" in table
  assert "| sb@2x |" in table and "tr cov / SB (BN train)" in table and "95% CI" in table
  assert "λ_max·‖w_SI‖²" in table and "| ‖w-w0‖ |" in table
  assert "p_holm" in table and "vary with the CPU" in table
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
  assert all("covariance_ratio_training" in r for r in rows)  # cached: measured once
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


def _summaries(workdir, row):
  out = {}
  for seed in SEEDS:
    with open(os.path.join(workdir, row, f"seed_{seed}", "summary.json")) as f:
      out[seed] = json.load(f)
  return out


def test_a_table_split_over_devices_equals_it_on_one_resumes_and_measures(table_dir, tmp_path):
  """Two rows of ``table_dir`` (one device) again with each population over two devices."""
  workdir = str(tmp_path)
  train = CountingTrain()
  configs = {v: tiny_config(v) for v in ("sb", "lb+lr+gbn+ra")}
  lines = []
  rows = table1.run_table(
    configs, SEEDS, workdir, train_fn=train, echo=lines.append, member_devices=2,
    covariance=False,
  )  # fmt: skip
  assert sum("over 2 devices (" in line for line in lines) == len(configs)  # each start
  for row in configs:
    split, whole = _summaries(workdir, row), _summaries(table_dir[0], row)
    for seed in SEEDS:
      one, two = whole[seed], split[seed]
      assert two["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=0.02)
      assert two["weight_distance"] == pytest.approx(one["weight_distance"], rel=1e-3)
  # Every seed's directory holds its single run (one device), which the measurements rebuild.
  assert all(r["top_hessian_eigenvalue"] is not None for r in rows)
  again = CountingTrain()
  table1.run_table(
    configs, SEEDS, workdir, train_fn=again, echo=lines.append, member_devices=2,
    covariance=False,
  )  # fmt: skip
  assert again.calls == []


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
  assert set(table1.parse_variants("reviewers")) <= set(table1.parse_variants("all"))
  assert set(table1.DEFAULT_VARIANTS) < set(table1.parse_variants("all"))
  # The default set holds the rows of the claims about Hoffer Table 1's columns and the noises.
  needed = {r for c in paper_claims.CLAIMS
            if "ra" not in c.second and "@" not in c.first and "gni" not in c.first
            for r in (c.first, c.second) if r != "sb@2x"}  # fmt: skip
  assert needed == set(table1.DEFAULT_VARIANTS), needed ^ set(table1.DEFAULT_VARIANTS)
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


def test_rows_scan_whole_logging_intervals_only_where_every_event_falls_on_one():
  """``rows.whole_calls``: one compiled call length per row, or one update per call."""
  configs = {v: table1.variant_config(f1, v, "quick") for v in ("sb", "lb", "lb+lr+gbn+ra")}
  for config in configs.values():
    table1.schedule_records(config, num_train=8000)
  # SB and +RA: 5 000 updates, logs every 50, evaluations every 250, checkpoints every 1 000.
  assert configs["sb"].steps_per_call == configs["lb+lr+gbn+ra"].steps_per_call == 50
  # 312 updates: logs every 3, evaluations every 15.6 updates (at 16, 32, 47, ...).
  assert configs["lb"].steps_per_call == 1
  # A checkpoint inside the interval: the largest length that divides every event step.
  sb = configs["sb"]
  sb.checkpoint_every_steps = 125
  assert rows_lib.whole_calls(sb, training.make_plan(sb, 8000, 1)) == 25
  # A flag keeps its value.
  lb = table1.variant_config(f1, "lb", "quick", {"steps_per_call": 4})
  table1.schedule_records(lb, num_train=8000, overrides={"steps_per_call": 4})
  assert lb.steps_per_call == 4


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


@pytest.mark.slow  # the driver in a subprocess: about 45 s on two shared cores
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


# Seed means (%) at which every tested claim is shown; each violation below flips one. Three
# seeds each, 0.1 points apart: the intervals are about +-0.23 points.
MEANS = {
  "sb": 80.5,
  "sb@2x": 80.6,
  "lb": 70.5,
  "lb+lr": 73.5,
  "lb+lr+gbn": 73.7,
  "lb+lr+gbn+ra": 82.0,
  "lb+lr+ra": 78.0,
  "lb+mult": 73.5,
  "lb+mult+ra": 78.1,
  "lb+linear": 60.5,
  "lb+linear+white": 63.5,
  "lb+linear@r4": 70.5,
  "lb+linear+white@r4": 73.5,
  "lb+lr+gni": 73.8,
  "lb+lr+gni+ra": 82.0,
}
GOOD = {v: [m - 0.1, m, m + 0.1] for v, m in MEANS.items()}
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


RA_ROWS = (
  "lb+lr+gbn+ra",
  "lb+lr+ra",
  "lb+mult+ra",
  "lb+lr+gni+ra",
)  # moved together: only the gap to SB changes
EQUAL_EPOCH_LR = (
  "lb+lr",
  "lb+lr+gbn",
  "lb+mult",
  "lb+lr+gni",
)  # moved together: +GBN and +mult keep pace

# claim name prefix -> (rows that violate it, the claims that then are not shown).
VIOLATIONS = {
  "SB converged": (shifted("sb@2x", by=3.0), ["SB converged"]),
  # LB at SB's accuracy: the interval excludes Hoffer's 1.22 points.
  "LB below SB": (shifted("lb", *EQUAL_EPOCH_LR, by=10.0), ["LB below SB"]),
  "+LR above LB": (shifted(*EQUAL_EPOCH_LR, by=-3.0), ["+LR above LB"]),
  "+GBN not below +LR": (shifted("lb+lr+gbn", by=-3.0), ["+GBN not below +LR"]),
  # +RA 3.5 points below SB: neither closes the gap nor overshoots.
  "+RA closes the gap": (
    shifted(*RA_ROWS, by=-5.0),
    ["+RA closes the gap", "+RA above SB", "+GNI+RA closes the gap"],
  ),
  # +RA at SB's accuracy: the gap is closed, the overshoot is not there.
  "+RA above SB": (shifted(*RA_ROWS, by=-1.5), ["+RA above SB"]),
  "Ghost BN beyond RA": (
    shifted("lb+lr+ra", "lb+mult+ra", by=4.0),
    ["Ghost BN beyond RA", "GNI beyond RA"],
  ),
  "+mult similar to +LR at equal epochs": (
    shifted("lb+mult", by=-5.0),
    ["+mult similar to +LR at equal epochs"],
  ),
  "+mult+RA similar": (shifted("lb+mult+ra", by=-5.0), ["+mult+RA similar"]),
  "White noise improves linear scaling at r = 16": (
    shifted("lb+linear+white", by=-3.0),
    ["White noise improves linear scaling at r = 16"],
  ),
  "White noise improves linear scaling at r = 4": (
    shifted("lb+linear+white@r4", by=-3.0),
    ["White noise improves linear scaling at r = 4"],
  ),
  "+GNI not below +GBN": (shifted("lb+lr+gni", by=-3.0), ["+GNI not below +GBN"]),
  # +GNI+RA 3 points down: below +GBN+RA and below SB by more than the margin (both claims).
  "+GNI+RA not below +GBN+RA": (
    shifted("lb+lr+gni+ra", by=-3.0),
    ["+GNI+RA not below +GBN+RA", "+GNI+RA closes the gap"],
  ),
  "+GNI+RA closes the gap": (
    shifted("lb+lr+gni+ra", by=-3.0),
    ["+GNI+RA not below +GBN+RA", "+GNI+RA closes the gap"],
  ),
  # +GNI+RA at +LR+RA's accuracy.
  "GNI beyond RA": (
    shifted("lb+lr+gni+ra", by=-4.0),
    ["+GNI+RA not below +GBN+RA", "+GNI+RA closes the gap", "GNI beyond RA"],
  ),
}
RULES = {
  "||w - w0|| grows linearly": {"r2": {"lb+lr": 0.5}},
  "LB, +LR and +GBN end short": {"distance": {**DISTANCE, "lb+lr+gbn": 31.0}},
  "Update covariance at w0": {"covariance": {**COVARIANCE, "lb": 1.0}},
}


def by_prefix(checks):
  out = {}
  for prefix in (*VIOLATIONS, *RULES):
    (match,) = [c for c in checks if c["name"].startswith(prefix)]
    out[prefix] = match
  return out


def not_shown(checks):
  return [p for p, c in by_prefix(checks).items() if c["outcome"] != statistics.SHOWN]


def test_each_claim_is_shown_on_good_numbers_and_contradicted_when_they_violate_it(table_dir):
  template = table1.aggregate(table_dir[0], ["sb"], SEEDS)[0]  # a row as the driver makes it
  good = table1.claims(claim_rows(template))
  assert not_shown(good) == [], [c for c in good if c["outcome"] != "shown"]
  for prefix, (accuracy, flipped) in VIOLATIONS.items():
    bad = by_prefix(table1.claims(claim_rows(template, accuracy=accuracy)))
    assert not_shown(bad.values()) == flipped, (prefix, not_shown(bad.values()))
    assert all(bad[p]["outcome"] == statistics.CONTRADICTED for p in flipped), prefix
  for prefix, violation in RULES.items():
    bad = table1.claims(claim_rows(template, **violation))
    assert not_shown(bad) == [prefix], (prefix, not_shown(bad))
  # The claims' statistics are bigbatch_jax.statistics' on the rows' per-seed accuracies.
  (ra,) = [c for c in good if c["name"].startswith("+RA closes the gap")]
  expected = statistics.evaluate(
    paper_claims.Hypothesis("non_inferiority", effect=0.26, margin=paper_claims.MARGIN),
    GOOD["lb+lr+gbn+ra"],
    GOOD["sb"],
  )
  for key in ("difference", "ci95", "p_value", "power", "seeds_needed"):
    assert ra[key] == pytest.approx(expected[key]), key
  tested = [c for c in good if c["kind"] != "rule"]
  assert [c["p_holm"] for c in tested] == pytest.approx(
    statistics.holm([c["p_value"] for c in tested])
  )
  assert paper_claims.welch_p([1.0], [2.0, 3.0]) is None


def test_three_noisy_seeds_leave_the_white_noise_claim_inconclusive_with_the_seeds_it_needs(
  table_dir,
):
  """The README's r = 16 numbers of the three-seed table (per-seed values with its means and
  stds): no outcome either way, and more seeds needed than three."""
  template = table1.aggregate(table_dir[0], ["sb"], SEEDS)[0]
  noisy = {**GOOD, "lb+linear": [68.12, 70.83, 73.54], "lb+linear+white": [69.06, 70.55, 72.04]}
  (white,) = [
    c for c in table1.claims(claim_rows(template, accuracy=noisy)) if "r = 16" in c["name"]
  ]
  assert white["outcome"] == statistics.INCONCLUSIVE and white["power"] < 0.3
  assert white["seeds_needed"] > 3 and white["ci95"][0] < -4 and white["ci95"][1] > 4
  one_seed = {**GOOD, "lb+linear": [70.0]}
  (white,) = [
    c for c in table1.claims(claim_rows(template, accuracy=one_seed)) if "r = 16" in c["name"]
  ]
  assert white["outcome"] == statistics.INCONCLUSIVE and white["p_value"] is None


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
      assert plan.batch_size == (64 if variant.startswith("sb") else lb)
      restarts = protocol != "clean" and "lamb" not in variant
      assert bool(plan.momentum_restart_steps) == restarts
  assert rows_lib.LABELS["lb+lars"] == "LARS" and "lb+lars" not in rows_lib.DEFAULT_VARIANTS
  # Smith et al. grow from B_S; Goyal et al.'s batch norm runs over 32 examples (per worker).
  assert {"sb+grow", "lb+linear", "lb+linear+white"} <= set(variants) and "lb+grow" not in variants
  goyal = rows_lib.variant_config(f1, "lb+linear+warmup+gbn", "quick")
  assert training.make_plan(goyal, num_train=16000, num_devices=1).ghost_batch_size == 32
  smith = rows_lib.variant_config(f1, "sb+grow", "quick", {"batch_growth_max": 8000})
  phases = training.make_plan(smith, num_train=8000, num_devices=1).batch_phases
  assert [size for _, size in phases] == [64, 640, 6400]  # x10 at each drop, capped at 8000
  mine = rows_lib.variant_config(f1, "lb+linear+warmup+gbn", "quick", {"ghost_batch_size": 128})
  assert mine.ghost_batch_size == 128


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
