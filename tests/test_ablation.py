"""The Table 1 driver's ablation set and its --protocol=reference rows."""

import json
import math
import os

import jax
import numpy as np
import pytest
from scipy import stats

from bigbatch_jax import protocol as protocol_lib
from bigbatch_jax.data import ArrayDataset
from bigbatch_jax.data.reference_mnist import reference_mnist_augmentation
from bigbatch_jax.training import Checkpointer, make_plan
from bigbatch_jax.training.spec import load_data
from experiments.configs import f1
from experiments.table1 import ablation, rows
from experiments.table1 import report as report_lib
from experiments.table1.__main__ import with_protocol

# A tiny F1 on synthetic vectors: base batch 16, large 64 (r = 4), 2 epochs (a momentum restart).
TINY = {
  "dataset": "synthetic",
  "model_options.hidden": 16,
  "model_options.depth": 2,
  "base_batch_size": 16,
  "large_batch_size": 64,
  "regime.epochs": 2.0,
  "regime.drop_epochs": (1.0,),
  "eval_on_train": False,
  "eval_batch_size": 64,
  "checkpoint_every_steps": 0,
  "progress_bar": False,
}


def _numbers(per_seed):
  return {
    "test_accuracy_mean": float(np.mean(per_seed)),
    "test_accuracy_std": float(np.std(per_seed, ddof=1)),
    "test_accuracy_per_seed": list(per_seed),
  }


def _welch_by_hand(a, b):
  """Welch's t-test written out: t, Welch-Satterthwaite degrees of freedom, two-sided p."""
  va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
  t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
  df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
  return 2 * stats.t.sf(abs(t), df)


def _contrast_ci_by_hand(groups, weights):
  """The 95% interval of sum_g w_g mean(g) with Welch-Satterthwaite's df, written out."""
  parts = [w * w * np.var(g, ddof=1) / len(g) for g, w in zip(groups, weights)]
  df = sum(parts) ** 2 / sum(v * v / (len(g) - 1) for v, g in zip(parts, groups))
  d = sum(w * np.mean(g) for g, w in zip(groups, weights))
  half = stats.t.ppf(0.975, df) * math.sqrt(sum(parts))
  return [d - half, d + half]


def _welch_ci_by_hand(a, b):
  return _contrast_ci_by_hand((a, b), (1, -1))


def _readings(clean_small, clean_large, small, large):
  """The restart setting's reading for per-seed numbers of the four runs."""
  numbers = {
    "clean/sb": _numbers(clean_small),
    "clean/lb": _numbers(clean_large),
    "momentum_restart/sb": _numbers(small),
    "momentum_restart/lb": _numbers(large),
  }
  skipped = {setting: {"sb": "n/a", "lb": "n/a"} for setting in ablation.SETTINGS[2:]}
  by = {r["setting"]: r for r in ablation.ablation_rows(numbers, ("sb", "lb"), skipped)}
  return by["momentum_restart"]


def test_the_gap_change_reads_shown_contradicted_or_inconclusive():
  ten = np.linspace(-1.0, 1.0, 10)
  # The restart widens a 5-point gap to 8 points, tightly: shown, widens.
  widened = _readings(81 + ten, 76 + ten, 81 + ten, 73 + ten)
  assert widened["outcome"] == "shown" and widened["direction"] == "widens"
  assert widened["gap_change"] == pytest.approx(3.0)
  narrowed = _readings(81 + ten, 76 + ten, 81 + ten, 79 + ten)
  assert narrowed["outcome"] == "shown" and narrowed["direction"] == "narrows"
  # The same gap, tightly: the change lies within +-1 point, so "moves it" is contradicted.
  same = _readings(81 + 0.1 * ten, 76 + 0.1 * ten, 81 + 0.1 * ten, 76.05 + 0.1 * ten)
  assert same["outcome"] == "contradicted" and "direction" not in same
  assert same["gap_within_margin_p_holm"] < 0.025
  # A 0.5-point change with spreads of 3 points over 3 seeds: neither.
  loose = _readings([78, 81, 84], [73, 76, 79], [78, 81, 84], [72.5, 75.5, 78.5])
  assert loose["outcome"] == "inconclusive"
  # Four runs of variance 9 over 3 seeds: se^2 = 4 * 9 / 3 = 12, df = 12^2 / (4 * 3^2 / 2) = 8.
  assert loose["gap_change_p"] == pytest.approx(2 * stats.t.sf(0.5 / math.sqrt(12), 8))


def test_ablation_rows_gap_p_value_and_not_applicable_cells():
  sb, lb = [80.0, 81.0, 82.0], [70.0, 72.0, 74.0]
  restart_lb = [60.0, 61.0, 65.0]
  numbers = {
    "clean/sb": _numbers(sb),
    "clean/lb": _numbers(lb),
    "momentum_restart/sb": _numbers([80.0, 80.5, 81.0]),
    "momentum_restart/lb": _numbers(restart_lb),
    "all/lb": _numbers(restart_lb),
  }
  skipped = {
    "reference_mnist_augment": {"sb": "not images", "lb": "not images"},
    "bn_scale_uniform": {"sb": "no batch norm", "lb": "no batch norm"},
    "script_columns": {"sb": "no lr rule", "lb": "no lr rule"},
    "main_normal_lr": {"sb": "no lr rule", "lb": "no lr rule"},
    "partial_last_batch": {"sb": "batch divides", "lb": "batch divides"},
    "unbiased_running_variance": {"sb": "no batch norm", "lb": "no batch norm"},
    "reference_mnist_normalize": {"sb": "not images", "lb": "not images"},
    "all": {"sb": "no artefact applies"},
  }
  by = {r["setting"]: r for r in ablation.ablation_rows(numbers, ("sb", "lb"), skipped)}
  assert list(by) == list(ablation.SETTINGS)
  # Gap 81 - 72 = 9; Welch: t = 9 / sqrt(1/3 + 4/3), df = 50/17.
  assert by["clean"]["gap"] == pytest.approx(9.0)
  assert by["clean"]["p_value"] == pytest.approx(_welch_by_hand(sb, lb), rel=1e-9)
  assert by["clean"]["p_value"] == pytest.approx(2 * stats.t.sf(9 / math.sqrt(5 / 3), 50 / 17))
  assert by["clean"]["gap_change"] == pytest.approx(0.0)
  assert by["momentum_restart"]["gap"] == pytest.approx(80.5 - 62.0)
  assert by["momentum_restart"]["gap_change"] == pytest.approx(80.5 - 62.0 - 9.0)
  assert by["momentum_restart"]["p_value"] == pytest.approx(
    _welch_by_hand([80.0, 80.5, 81.0], restart_lb), rel=1e-9
  )
  # Applies to neither row: no gap; applies to LB only: SB's clean run stands in.
  assert by["bn_scale_uniform"]["gap"] is None and by["bn_scale_uniform"]["p_value"] is None
  assert not by["bn_scale_uniform"]["small"]["applies"]
  assert by["all"]["small"]["reason"] == "no artefact applies"
  assert by["all"]["gap"] == pytest.approx(81.0 - 62.0)
  assert by["all"]["p_value"] == pytest.approx(_welch_by_hand(sb, restart_lb), rel=1e-9)
  text = report_lib.format_ablation(
    list(by.values()),
    {"dataset": "d", "model": "m", "preset": "quick", "rows": ["sb", "lb"],
     "batch_sizes": [16, 64], "seeds": [0, 1, 2], "runs_run": 5, "runs_skipped": 0},
  )  # fmt: skip
  clean_ci = by["clean"]["gap_ci95"]
  assert clean_ci == pytest.approx(_welch_ci_by_hand(sb, lb))
  assert f"| clean protocol | 81.00 ± 1.00 | 72.00 ± 2.00 | +9.00 [{clean_ci[0]:+.2f}, " in text
  assert "| batch-norm scales U(0, 1) (item 3) | n/a | n/a | n/a | - | n/a | - |" in text
  # The restart's change: (sb_x - lb_x) - (sb - lb) over four independent runs.
  change = [80.0, 80.5, 81.0], restart_lb, sb, lb
  assert by["momentum_restart"]["gap_change_ci95"] == pytest.approx(
    _contrast_ci_by_hand(change, (1, -1, -1, 1))
  )
  # "all": SB's clean run stands in, so the change is lb - restart_lb, two runs only.
  assert by["all"]["gap_change_ci95"] == pytest.approx(_welch_ci_by_hand(lb, restart_lb))
  assert "- all that apply together (the reference protocol), sb: no artefact applies" in text


def test_parse_ablation_names_the_value():
  assert ablation.parse_ablation(" sb , lb+lr ") == ("sb", "lb+lr")
  for bad in ("sb", "sb,sb", "sb,lb,lb+lr", ""):
    with pytest.raises(ValueError, match=r"--ablation=.*expected two different rows"):
      ablation.parse_ablation(bad)
  with pytest.raises(ValueError, match=r"nonsense"):
    ablation.parse_ablation("sb,nonsense")


def _mnist_shaped(num_train=2048):
  """MNIST's shape and normalisation (uint8 28 x 28 x 1), random pixels."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (num_train, 28, 28, 1), dtype=np.uint8)
  y = rng.integers(0, 10, num_train).astype(np.int32)
  mean, std = np.asarray([0.1307], np.float32), np.asarray([0.3081], np.float32)
  return ArrayDataset("npz:mnist_like", x, y, x[:32], y[:32], 10, mean, std)


def test_what_applies_on_vectors_and_on_images():
  vectors = load_data(rows.variant_config(f1, "sb", "quick", TINY))
  configs, skipped = ablation.ablation_configs(f1, ("sb", "lb+lr"), "quick", TINY, vectors)
  assert set(skipped["reference_mnist_augment"]) == {"sb", "lb+lr"}
  assert "not in-memory images" in skipped["reference_mnist_augment"]["sb"]
  assert set(skipped["main_normal_lr"]) == {"sb"}  # +LR's lr is scaled by (B/256)**0.5
  assert "momentum_restart/sb" in configs and "main_normal_lr/lb+lr" in configs
  everything = configs["all/lb+lr"]
  assert everything.protocol == "clean" and not everything.reference_mnist_augment
  assert everything.momentum_restart and everything.bn_scale_uniform
  # "all" is the reference protocol's items: each column's script, not the fitted rule.
  assert everything.script_columns and not everything.main_normal_lr
  assert everything.unbiased_running_variance and not everything.reference_mnist_normalize
  assert "not one-channel in-memory images" in skipped["reference_mnist_normalize"]["sb"]
  assert not any(configs["clean/sb"][k] for k in ablation.ARTEFACTS)
  images = _mnist_shaped()
  config = rows.variant_config(f1, "lb", "quick", {})
  assert ablation.not_applicable("reference_mnist_augment", config, images) is None
  assert ablation.not_applicable("momentum_restart", config, images) is None
  one_epoch = rows.variant_config(f1, "lb", "quick", {"regime.epochs": 1.0})
  assert "only one epoch" in ablation.not_applicable("momentum_restart", one_epoch, images)
  assert ablation.not_applicable("bn_scale_uniform", config, images) is None
  lamb = rows.variant_config(f1, "lb+lamb", "quick", {})
  assert "this run has none" in ablation.not_applicable("momentum_restart", lamb, images)
  with pytest.raises(ValueError, match=r"--config\.protocol cannot be set with --ablation"):
    ablation.ablation_configs(f1, ("sb", "lb"), "quick", {"protocol": "reference"}, images)


def test_fitted_protocol_builds_the_papers_rows_without_training():
  # What `python -m experiments.table1 --config=experiments/configs/f1.py
  # --protocol=reference-fitted` builds, here at the paper's size on MNIST's 60 000.
  overrides = with_protocol({}, "reference-fitted")
  configs = {r: rows.variant_config(f1, r, "full", overrides) for r in rows.VARIANT_SETS["paper"]}
  plans = {r: make_plan(c, 60_000, num_devices=1) for r, c in configs.items()}
  # Momentum restarts at each epoch's first update: 469 SB updates, 15 LB updates an epoch.
  assert plans["sb"].momentum_restart_steps[:3] == (0, 469, 938)
  assert plans["lb"].momentum_restart_steps[:3] == (0, 15, 30)
  # main_normal.py's lr: x sqrt(4096 / 256) = 4 for +LR, +GBN and +RA; SB and LB unscaled.
  assert plans["sb"].lr_scale == 1.0 and plans["lb"].lr_scale == 1.0
  for r in ("lb+lr", "lb+lr+gbn", "lb+lr+gbn+ra"):
    assert plans[r].lr_scale == pytest.approx(4.0) and plans[r].lr_base == 256
  # RA's stretch: ceil(4096 / 256) = 16, not B_L / B_S = 32.
  assert plans["lb+lr+gbn+ra"].regime.epochs == 16 * plans["sb"].regime.epochs
  assert plans["sb@2x"].regime.epochs == 2 * plans["sb"].regime.epochs
  # The augmentation applies on MNIST-shaped images only, not on MNIST-1D.
  protocol = protocol_lib.resolve_protocol(configs["sb"])
  assert reference_mnist_augmentation(protocol, _mnist_shaped(), "none") is not None
  vectors = load_data(rows.variant_config(f1, "sb", "quick", TINY))
  assert reference_mnist_augmentation(protocol, vectors, "none") is None
  assert not any(plans[r].bn_scale_uniform for r in plans)  # item 3 is not in the fitted one
  with pytest.raises(ValueError, match=r"--protocol=reference and --config.protocol=clean"):
    with_protocol({"protocol": "clean"}, "reference")


@pytest.mark.slow
def test_ablation_set_runs_on_a_tiny_preset_and_writes_its_table(tmp_path):
  pair = ("sb", "lb+lr")
  data = load_data(rows.variant_config(f1, "sb", "quick", TINY))
  configs, skipped = ablation.ablation_configs(f1, pair, "quick", TINY, data)
  for config in configs.values():
    rows.schedule_records(config, data.num_train, TINY)
  workdir = str(tmp_path)
  out = ablation.run_ablation(configs, skipped, pair, (0, 1), workdir, echo=lambda line: None)
  with open(os.path.join(workdir, "table1.json")) as f:
    payload = json.load(f)
  assert [r["setting"] for r in payload["ablation"]] == list(ablation.SETTINGS)
  assert set(payload["runs"]) == set(configs) and payload["meta"]["rows"] == list(pair)
  by = {r["setting"]: r for r in out}
  for setting in ("clean", "momentum_restart", "bn_scale_uniform", "main_normal_lr", "all"):
    r = by[setting]
    assert len(r["large"]["test_accuracy_per_seed"]) == 2
    assert r["gap"] == pytest.approx(
      r["small"]["test_accuracy_mean"] - r["large"]["test_accuracy_mean"]
    )
    assert r["p_value"] is None or 0 <= r["p_value"] <= 1
  assert by["reference_mnist_augment"]["gap"] is None
  # Each artefact that applies changes the run: its final ||w - w0|| differs from the clean
  # one; the unbiased running variance changes only the running statistics.
  distance = {name: run["weight_distance"] for name, run in payload["runs"].items()}
  for name in configs:
    setting, row = name.split("/")
    if setting == "unbiased_running_variance":
      stats = [
        Checkpointer(os.path.join(workdir, s, row, "seed_0", "checkpoints")).restore_raw()
        for s in ("clean", setting)
      ]
      pairs = zip(*(jax.tree.leaves(x["batch_stats"]) for x in stats), strict=True)
      assert not all(np.allclose(a, b) for a, b in pairs), name
    elif setting != "clean":
      assert distance[name] != distance["clean/" + row], name
  with open(os.path.join(workdir, "table1.md")) as f:
    assert "| clean protocol |" in f.read()


def test_command_line_refuses_ablation_with_a_protocol_or_variants(tmp_path):
  import subprocess
  import sys

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for flags in (["--protocol=reference"], ["--variants=sb"]):
    done = subprocess.run(
      [sys.executable, "-m", "experiments.table1", "--ablation=sb,lb", *flags,
       f"--workdir={tmp_path}"],
      cwd=repo, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "chooses its own rows and protocols; drop --variants and --protocol" in done.stderr
  assert not os.listdir(tmp_path) or os.listdir(tmp_path) == ["jax_cache"]
