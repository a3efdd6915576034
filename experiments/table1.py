"""Hoffer et al. Table 1 end to end: every regime variant, several seeds, one table.

  python -m experiments.table1                      # quick reproduction on MNIST-1D, CPU
  python -m experiments.table1 --config=experiments/configs/f1.py --config.dataset=tfds:mnist

Runs the variants one after another (SB, LB, +LR, +GBN, +RA, then the noise
remedies +mult and Jaiswal's linear+white) for each seed with
``bigbatch_jax.training.train_and_evaluate`` in ``WORKDIR/VARIANT/seed_N``,
then writes to ``--workdir``:

* ``table1.md`` and ``table1.json``: one row per variant with the test
  accuracy (mean and standard deviation over seeds, %), updates, epochs, wall
  time per run, the final ||w - w0|| and its fit against log(updates); the
  paper's accuracy beside the measured one when the dataset is the paper's;
  and the checks of the paper's claims, computed from the numbers.
* ``table1_error_epochs.png``, ``table1_error_updates.png`` (test error,
  mean over seeds), ``table1_weight_distance.png`` (||w - w0|| against
  log(updates) with the fitted slope and R^2 per variant, Hoffer Figure 2),
  ``table1_gap.png`` (accuracy minus SB's, with the paper's gap beside).

The driver is resumable: a run with a ``summary.json`` (or a ``failed.json``,
written when a run diverges) is not run again, and an interrupted run resumes
from its last checkpoint. A finished run whose config differs from the one the
flags now give is refused, so a table never mixes two configs.

Flags: ``--config`` (a config module; its ``get_config(VARIANT[,OPTION])``
builds each variant, and its optional ``PAPER_ACCURACY`` / ``PAPER_DATASET``
give the paper's numbers), ``--config.KEY=VALUE`` (applied to every variant),
``--workdir``, ``--seeds``, ``--variants`` and ``--preset``:

* ``quick``: the config's ``table1`` option, the laptop-sized reproduction.
* ``full``: the config as the paper defines it (e.g. F1: 50 epochs, batch
  128 against 4096, 784-512x5-10).
* ``auto`` (default): ``full`` when the dataset is the paper's, else ``quick``.

How the quick preset was chosen (F1 family on MNIST-1D, 2 CPU cores shared
with other jobs at load average 6-8, one seed per measurement):

* Cost: the regime-adapted run (+RA) has as many updates as SB but each sees
  r times more examples, so it dominates. Width 256 x depth 3 at B_S 64, B_L
  1024 (r = 16), 10 epochs: +RA took 75 s; width 128 took 20 s. Width 128 it
  is, with depth 3 (F1's layers, fewer of them).
* The base batch: B_S 32 at the F1 learning rate 0.1 was too noisy for SB to
  fit (73.8% test, below LB at batch 512, 75.3%). B_S 64 fits.
* Data and epochs: 20 000 MNIST-1D samples (16 000 train, 4 000 test). With
  lr drops at 1/2 and 3/4 of training, width 128: 10 epochs gave SB 79.4%,
  LB 72.4%, +RA 89.5%; 20 epochs SB 84.9%, LB 81.1%, +LR 82.6%.
* The regime then took the mnist_f1 shape (lr x0.1 at 1/5, 2/5 and 3/5 of
  training), weight decay 1e-4 and clipping at norm 5: 20 epochs gave SB
  79.0%, LB 70.0%, +LR 71.5%, +GBN 71.8%, +RA 89.1%, +mult 49.9%,
  linear+white 52.0%, 137 s for the seven variants of one seed, so three
  seeds fit in about 7 minutes with room for a busier machine. That is the
  preset; no size was tuned on the table's outcome beyond these runs.
* Every number is in ``experiments/configs/f1.py`` (``TABLE1_QUICK``);
  everything else (scaled lr, adapted epochs, ghost size, noise) is derived
  by ``make_plan`` from it.

Each run is evaluated ``EVALS_PER_RUN`` times and logs ``LOGS_PER_RUN``
times (||w - w0||, lr, loss), whatever its length (unless --config.eval_every_epochs or
--config.log_every_steps are given), so that curves of runs of 300 and 5000
updates have the same resolution.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from bigbatch_jax.data import load_data
from bigbatch_jax.training import (
  fit_log_growth,
  make_plan,
  parse_variant,
  retain_freed_host_memory,
  train_and_evaluate,
)
from bigbatch_jax.training.preemption import PREEMPTED_EXIT_CODE, Preempted
from bigbatch_jax.training.workdir import RESUMABLE_KEYS

# Hoffer Table 1's columns, then the noise remedies (Hoffer sec. 4; Jaiswal & Taura).
LABELS = {
  "sb": "SB",
  "lb": "LB",
  "lb+lr": "+LR",
  "lb+lr+gbn": "+GBN",
  "lb+lr+gbn+ra": "+RA",
  "lb+mult": "+mult",
  "lb+linear+white": "linear+white",
}
DEFAULT_VARIANTS = tuple(LABELS)
PRESETS = ("auto", "quick", "full")
# The config-module option each preset asks for (None: the config as the paper has it).
PRESET_OPTIONS = {"quick": "table1", "full": None}
EVALS_PER_RUN = 20
LOGS_PER_RUN = 100
FIGURES = (
  "table1_error_epochs.png",
  "table1_error_updates.png",
  "table1_weight_distance.png",
  "table1_gap.png",
)
# Per run: the driver's measure of the whole run's wall time.
RUN_TIME_FILE = "run_time.json"
HESSIAN_FILE = "hessian.json"


def top_hessian_eigenvalue(directory: str) -> float:
  """The run's top Hessian eigenvalue (sharpness, Keskar et al.), cached beside the run."""
  path = os.path.join(directory, HESSIAN_FILE)
  if not os.path.exists(path):
    from bigbatch_jax.diagnostics import top_hessian_eigenvalue_of_run
    from experiments.configs import default

    # 4 fixed batches of up to 256 training examples (fewer on a small dataset).
    num_train = _read_json(os.path.join(directory, "summary.json"))["num_train"]
    value = top_hessian_eigenvalue_of_run(
      directory, batch_size=min(256, num_train // 4), defaults=default.get_config()
    )
    with open(path, "w") as f:
      json.dump({"top_hessian_eigenvalue": value}, f)
  return _read_json(path)["top_hessian_eigenvalue"]


DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "f1.py")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config",
  DEFAULT_CONFIG,
  "Config module (no ':argument'; the driver builds one config per variant). "
  "--config.KEY=VALUE overrides apply to every variant.",
  lock_config=True,
)
flags.DEFINE_string("workdir", "runs/table1", "Output directory (resumable).")
flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds, e.g. 0,1,2.")
flags.DEFINE_string("variants", ",".join(DEFAULT_VARIANTS), "Comma-separated variants.")
flags.DEFINE_bool("hessian", True, "Measure each run's top Hessian eigenvalue (the λ_max column).")
flags.DEFINE_string(
  "preset",
  "auto",
  "quick: the config's laptop-sized 'table1' option; full: the paper's regime; "
  "auto: full on the paper's dataset, else quick.",
)


def parse_seeds(text: str) -> list[int]:
  """``"0,1,2"`` -> ``[0, 1, 2]``; errors name the bad value."""
  try:
    seeds = [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    raise ValueError(f"--seeds={text!r}: expected comma-separated integers like 0,1,2") from None
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise ValueError(f"--seeds={text!r}: expected distinct non-negative integers like 0,1,2")
  return seeds


def parse_variants(text: str) -> list[str]:
  """``"sb,lb+lr"`` -> ``["sb", "lb+lr"]``, each checked by ``parse_variant``."""
  variants = [v.strip() for v in text.split(",") if v.strip()]
  if not variants:
    raise ValueError(f"--variants={text!r}: expected variants like {','.join(DEFAULT_VARIANTS)}")
  for v in variants:
    parse_variant(v)  # raises with the offending part and the valid ones
  if len(set(variants)) != len(variants):
    raise ValueError(f"--variants={text!r} lists a variant twice")
  return variants


def load_config_module(path: str) -> ModuleType:
  """Imports a config file (``experiments/configs/f1.py``) as a module."""
  if not os.path.isfile(path):
    raise ValueError(f"--config={path!r}: no such config file")
  name = "table1_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"--config={path!r} has no get_config function")
  return module


def resolve_preset(preset: str, dataset: str, paper_dataset: str | None) -> str:
  """``auto`` -> ``full`` on the paper's dataset, else ``quick``; checks the name."""
  if preset not in PRESETS:
    raise ValueError(f"--preset={preset!r}; valid: {', '.join(PRESETS)}")
  if preset == "auto":
    return "full" if paper_dataset is not None and dataset == paper_dataset else "quick"
  return preset


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
  """Sets dotted ``KEY=VALUE`` overrides (``model_options.hidden``) in place."""
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    target = config
    for part in path:
      target = target[part]
    target[leaf] = value


def variant_config(
  module: ModuleType, variant: str, preset: str, overrides: Mapping[str, Any] = ()
) -> ml_collections.ConfigDict:
  """``module.get_config("VARIANT[,OPTION]")`` for the preset, with the overrides applied."""
  overrides = dict(overrides)
  if "variant" in overrides:
    raise ValueError("--config.variant cannot be set here; choose variants with --variants")
  option = PRESET_OPTIONS[preset]
  arg = variant if option is None else f"{variant},{option}"
  try:
    config = module.get_config(arg)
  except ValueError as e:
    raise ValueError(f"preset {preset!r} uses get_config({arg!r}) of {module.__file__}: {e}") from e
  apply_overrides(config, overrides)
  config.variant = variant
  return config


def schedule_records(
  config: ml_collections.ConfigDict, num_train: int, overrides: Iterable[str] = ()
) -> None:
  """Sets the evaluation and logging periods so that every run has the same resolution."""
  plan = make_plan(config, num_train, num_devices=1)
  if "eval_every_epochs" not in overrides:
    config.eval_every_epochs = plan.regime.epochs / EVALS_PER_RUN
  if "log_every_steps" not in overrides:
    config.log_every_steps = max(1, plan.num_steps // LOGS_PER_RUN)


def run_dir(workdir: str, variant: str, seed: int) -> str:
  return os.path.join(workdir, variant, f"seed_{seed}")


def _read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def _check_same_config(config: ml_collections.ConfigDict, directory: str) -> None:
  """Refuses to reuse a finished run made with a different config."""
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    return
  previous, current = _read_json(path), json.loads(config.to_json())
  changed = sorted(
    k
    for k in set(previous) | set(current)
    if k not in RESUMABLE_KEYS and previous.get(k) != current.get(k)
  )
  if changed:
    details = "; ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in changed)
    raise ValueError(
      f"{directory} holds a finished run of a different config ({details}). Use another "
      "--workdir, or delete that run directory to re-run it"
    )


def run_table(
  configs: Mapping[str, ml_collections.ConfigDict],
  seeds: Sequence[int],
  workdir: str,
  *,
  paper_accuracy: Mapping[str, float] | None = None,
  paper_dataset: str | None = None,
  preset: str = "",
  train_fn: Callable[[ml_collections.ConfigDict, str], dict] = train_and_evaluate,
  echo: Callable[[str], None] = print,
  hessian: bool = True,
) -> list[dict]:
  """Runs every (variant, seed) not yet finished, then writes the table and figures.

  Args:
    configs: variant name -> its config (the seed is set here).
    seeds: the seeds of every variant.
    workdir: output directory; runs go to ``workdir/VARIANT/seed_N``.
    paper_accuracy: the paper's accuracy (%) per variant, shown when the
      configs' dataset is ``paper_dataset``.
    paper_dataset: the dataset the paper's numbers are for.
    preset: the preset name, recorded in the outputs.
    train_fn: runs one config in a directory (``train_and_evaluate``).
    echo: where progress lines go.
    hessian: measure each finished run's top Hessian eigenvalue (a column).

  Returns:
    The table rows (also in ``workdir/table1.json``).
  """
  os.makedirs(workdir, exist_ok=True)
  jobs = [(v, s) for v in configs for s in seeds]
  start = time.perf_counter()
  ran = 0
  for i, (variant, seed) in enumerate(jobs, 1):
    config = configs[variant].copy_and_resolve_references()
    config.seed = seed
    directory = run_dir(workdir, variant, seed)
    head = f"[{i}/{len(jobs)}] {variant} seed {seed}"
    if any(os.path.exists(os.path.join(directory, f)) for f in ("summary.json", "failed.json")):
      _check_same_config(config, directory)
      echo(f"{head}: done before, skipped")
      continue
    echo(f"{head} ({time.perf_counter() - start:.0f} s elapsed)")
    run_start = time.perf_counter()
    ran += 1
    try:
      summary = train_fn(config, directory)
    except FloatingPointError as e:
      # A diverged run is a result (the table says so), not a crash of the driver.
      os.makedirs(directory, exist_ok=True)
      with open(os.path.join(directory, "failed.json"), "w") as f:
        json.dump({"variant": variant, "seed": seed, "error": str(e)}, f, indent=2)
      echo(f"{head}: diverged: {e}")
      continue
    # The whole run's time (data, compilation, checkpoints, plots), not only the loop's.
    run_time = time.perf_counter() - run_start
    with open(os.path.join(directory, RUN_TIME_FILE), "w") as f:
      json.dump({"wall_time_s": run_time}, f)
    echo(
      f"{head}: test accuracy {100 * summary['test_accuracy']:.2f}%, "
      f"{summary['updates']} updates, {run_time:.0f} s"
    )
  if hessian:
    for variant, seed in jobs:
      directory = run_dir(workdir, variant, seed)
      if os.path.exists(os.path.join(directory, "summary.json")):
        top_hessian_eigenvalue(directory)
  some = next(iter(configs.values()))
  show_paper = paper_accuracy is not None and some.dataset == paper_dataset
  rows = aggregate(workdir, list(configs), seeds, paper_accuracy if show_paper else None)
  meta = {
    "dataset": some.dataset,
    "model": some.model,
    "preset": preset,
    "base_batch_size": some.base_batch_size,
    "large_batch_size": some.large_batch_size,
    "seeds": list(seeds),
    "paper_dataset": paper_dataset,
    "driver_wall_time_s": time.perf_counter() - start,
    "runs_run": ran,
    "runs_skipped": len(jobs) - ran,
  }
  write_table(rows, workdir, meta)
  plot_figures(workdir, rows, seeds)
  echo(format_table(rows, meta))
  echo(f"wrote {os.path.join(workdir, 'table1.md')}, table1.json and {', '.join(FIGURES)}")
  return rows


def _mean_curve(curves: Sequence[Mapping[float, float]]) -> tuple[np.ndarray, np.ndarray]:
  """The pointwise mean of per-seed curves over the x values they all have."""
  if not curves:
    return np.zeros(0), np.zeros(0)
  xs = sorted(set.intersection(*(set(c) for c in curves)))
  return np.asarray(xs, np.float64), np.asarray([np.mean([c[x] for c in curves]) for x in xs])


def _finite(v: Any) -> bool:
  return isinstance(v, int | float) and math.isfinite(v)


def run_curves(records: Sequence[dict]) -> dict[str, dict[float, float]]:
  """A run's curves: test error by step and by epoch, ||w - w0|| by step.

  ``initial_distance`` is ||w - w0|| during the initial high learning-rate
  phase (until the first drop of the logged lr), where Hoffer et al. observe
  the logarithmic growth (section 3, Figure 2a).
  """
  curves: dict[str, dict[float, float]] = {
    "error_step": {},
    "error_epoch": {},
    "distance": {},
    "initial_distance": {},
  }
  initial_lr = None
  for r in records:
    if _finite(r.get("test_error")):
      curves["error_step"][r["step"]] = r["test_error"]
      curves["error_epoch"][round(r["epoch"], 6)] = r["test_error"]
    if _finite(r.get("weight_distance")) and r["step"] > 0:
      curves["distance"][r["step"]] = r["weight_distance"]
      lr = r.get("lr")
      initial_lr = lr if initial_lr is None else initial_lr
      if lr is None or initial_lr is None or lr >= initial_lr * (1 - 1e-6):
        curves["initial_distance"][r["step"]] = r["weight_distance"]
  return curves


def _std(values: Sequence[float]) -> float:
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def aggregate(
  workdir: str,
  variants: Sequence[str],
  seeds: Sequence[int],
  paper_accuracy: Mapping[str, float] | None = None,
) -> list[dict]:
  """One row per variant from the runs' ``summary.json`` and ``metrics.jsonl``.

  Accuracies are in %. ``wall_time_s`` is the mean time of one run as the
  driver measured it (the training loop's own time if the driver did not run
  it). ``weight_distance`` is the mean final ||w - w0||;
  ``weight_distance_slope`` and ``weight_distance_r2`` fit the seed-mean
  curve of the initial high learning-rate phase as slope * log(updates) +
  intercept (Hoffer eq. 4 and Figure 2a: the growth of that phase). Missing runs are
  listed in ``missing_seeds``, diverged ones in ``diverged_seeds``.
  """
  rows = []
  for variant in variants:
    summaries, diverged, missing, curves, times, sharpness = [], [], [], [], [], []
    for seed in seeds:
      directory = run_dir(workdir, variant, seed)
      if os.path.exists(os.path.join(directory, "summary.json")):
        summaries.append(_read_json(os.path.join(directory, "summary.json")))
        timing = os.path.join(directory, RUN_TIME_FILE)
        source = _read_json(timing) if os.path.exists(timing) else summaries[-1]
        times.append(source["wall_time_s"])
        hessian_path = os.path.join(directory, HESSIAN_FILE)
        if os.path.exists(hessian_path):
          sharpness.append(_read_json(hessian_path)["top_hessian_eigenvalue"])
        metrics_path = os.path.join(directory, "metrics.jsonl")
        with open(metrics_path) as f:
          curves.append(run_curves([json.loads(line) for line in f if line.strip()]))
      elif os.path.exists(os.path.join(directory, "failed.json")):
        diverged.append(seed)
      else:
        missing.append(seed)
    accuracies = [100 * s["test_accuracy"] for s in summaries if _finite(s["test_accuracy"])]
    distances = [s["weight_distance"] for s in summaries if _finite(s["weight_distance"])]
    row: dict[str, Any] = {
      "variant": variant,
      "label": LABELS.get(variant, variant),
      "test_accuracy_mean": float(np.mean(accuracies)) if accuracies else None,
      "test_accuracy_std": _std(accuracies) if accuracies else None,
      "test_accuracy_per_seed": accuracies,
      "seeds": [s["seed"] for s in summaries],
      "diverged_seeds": diverged,
      "missing_seeds": missing,
      "updates": summaries[0]["updates"] if summaries else None,
      "epochs": summaries[0]["epochs"] if summaries else None,
      "batch_size": summaries[0]["batch_size"] if summaries else None,
      "lr": summaries[0]["lr"] if summaries else None,
      "wall_time_s": float(np.mean(times)) if times else None,
      "weight_distance": float(np.mean(distances)) if distances else None,
      "weight_distance_slope": None,
      "weight_distance_r2": None,
      "top_hessian_eigenvalue": float(np.mean(sharpness)) if sharpness else None,
    }
    steps, dist = _mean_curve([c["initial_distance"] for c in curves])
    if len(steps) >= 2:
      fit = fit_log_growth(steps, dist)
      row["weight_distance_slope"], row["weight_distance_r2"] = fit["slope"], fit["r2"]
    if paper_accuracy is not None:
      row["paper_accuracy"] = paper_accuracy.get(variant)
    rows.append(row)
  return rows


def claims(rows: Sequence[dict]) -> list[dict]:
  """The paper's claims checked on the measured rows: name, holds (bool or None), detail.

  The spread is the larger seed standard deviation of the two rows compared.
  """
  by = {r["variant"]: r for r in rows if r["test_accuracy_mean"] is not None}
  out = []
  sb = by.get("sb")
  if sb is None:
    return out

  def spread(*names):
    return max(by[n]["test_accuracy_std"] for n in names)

  if "lb" in by:
    gap, s = sb["test_accuracy_mean"] - by["lb"]["test_accuracy_mean"], spread("sb", "lb")
    out.append(
      {
        "claim": "LB below SB by more than the seed spread",
        "holds": gap > s,
        "detail": f"SB - LB = {gap:.2f} points, spread (max std) {s:.2f}",
      }
    )
  if "lb+lr+gbn+ra" in by:
    diff, s = (
      by["lb+lr+gbn+ra"]["test_accuracy_mean"] - sb["test_accuracy_mean"],
      spread("sb", "lb+lr+gbn+ra"),
    )
    out.append(
      {
        "claim": "+RA back to SB within the spread or better",
        "holds": diff >= -s,
        "detail": f"+RA - SB = {diff:+.2f} points, spread {s:.2f}",
      }
    )
  fitted = [r for r in rows if r["weight_distance_r2"] is not None]
  if fitted:
    worst = min(fitted, key=lambda r: r["weight_distance_r2"])
    out.append(
      {
        "claim": "||w - w0|| grows roughly linearly in log(updates) in the initial lr phase "
        "(R^2 >= 0.9)",
        "holds": worst["weight_distance_r2"] >= 0.9,
        "detail": f"lowest R^2 {worst['weight_distance_r2']:.3f} ({worst['variant']})",
      }
    )
  distance = {r["variant"]: r["weight_distance"] for r in rows if r["weight_distance"] is not None}
  if "sb" in distance:
    # Hoffer Table 1's large-batch columns before regime adaptation.
    short = [v for v in ("lb", "lb+lr", "lb+lr+gbn") if v in distance]
    if short:
      longest = max(short, key=distance.get)
      out.append(
        {
          "claim": "LB, +LR and +GBN end short of SB's ||w - w0||",
          "holds": distance[longest] < distance["sb"],
          "detail": f"SB {distance['sb']:.1f}; largest without RA {distance[longest]:.1f} "
          f"({longest})",
        }
      )
    if "lb+lr+gbn+ra" in distance:
      ra = distance["lb+lr+gbn+ra"]
      out.append(
        {
          "claim": "+RA reaches SB's ||w - w0|| (within 20%) or beyond",
          "holds": ra >= 0.8 * distance["sb"],
          "detail": f"+RA {ra:.1f}, SB {distance['sb']:.1f}",
        }
      )
  return out


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
  return missing if value is None else format(value, spec)


def format_table(rows: Sequence[dict], meta: Mapping[str, Any]) -> str:
  """The Markdown table (Hoffer Table 1 layout), its caption and the claim checks."""
  show_paper = any("paper_accuracy" in r for r in rows)
  head = ["variant", "", "test acc. (%)", "± std", "seeds"]
  head += ["paper (%)"] if show_paper else []
  head += ["batch", "updates", "epochs", "wall (s/run)", "||w-w0||", "slope", "R²", "λ_max"]
  lines = [
    f"Hoffer et al. Table 1 on {meta['dataset']} ({meta['model']}, preset {meta['preset']}, "
    f"B_S={meta['base_batch_size']}, B_L={meta['large_batch_size']}); accuracy is the final "
    f"test accuracy, mean ± standard deviation over seeds {meta['seeds']}.",
    "",
    "| " + " | ".join(head) + " |",
    "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|",
  ]
  for r in rows:
    acc = _fmt(r["test_accuracy_mean"], ".2f", "diverged" if r["diverged_seeds"] else "-")
    seeds = str(len(r["seeds"]))
    if r["diverged_seeds"]:
      seeds += f" ({len(r['diverged_seeds'])} diverged)"
    if r["missing_seeds"]:
      seeds += f" ({len(r['missing_seeds'])} missing)"
    cells = [r["variant"], r["label"], acc, _fmt(r["test_accuracy_std"], ".2f"), seeds]
    if show_paper:
      cells.append(_fmt(r.get("paper_accuracy"), ".2f"))
    cells += [
      _fmt(r["batch_size"], "d"),
      _fmt(r["updates"], "d"),
      _fmt(r["epochs"], "g"),
      _fmt(r["wall_time_s"], ".1f"),
      _fmt(r["weight_distance"], ".1f"),
      _fmt(r["weight_distance_slope"], ".2f"),
      _fmt(r["weight_distance_r2"], ".3f"),
      _fmt(r.get("top_hessian_eigenvalue"), ".3g"),
    ]
    lines.append("| " + " | ".join(cells) + " |")
  if not show_paper and meta.get("paper_dataset"):
    lines += ["", f"Paper numbers are shown only on the paper's dataset ({meta['paper_dataset']})."]
  checks = claims(rows)
  if checks:
    lines += ["", "Checks of the paper's claims on these numbers:", ""]
    for c in checks:
      verdict = {True: "holds", False: "DOES NOT HOLD"}[c["holds"]]
      lines.append(f"- {c['claim']}: **{verdict}** ({c['detail']})")
  lines += [
    "",
    f"Driver wall time: {meta['driver_wall_time_s']:.0f} s for {meta['runs_run']} runs "
    f"({meta['runs_skipped']} skipped as already done).",
  ]
  return "\n".join(lines)


def write_table(rows: Sequence[dict], workdir: str, meta: Mapping[str, Any]) -> None:
  """Writes ``table1.md`` and ``table1.json`` (``rows``, ``claims``, ``meta``)."""
  with open(os.path.join(workdir, "table1.md"), "w") as f:
    f.write(format_table(rows, meta) + "\n")
  payload = {
    "rows": list(rows),
    "claims": claims(rows),
    "meta": {**meta, "accuracy_unit": "percent"},
  }
  with open(os.path.join(workdir, "table1.json"), "w") as f:
    json.dump(payload, f, indent=2)


def _intercept(steps: np.ndarray, curves: Mapping[str, tuple]) -> float:
  return fit_log_growth(steps, curves["initial_distance"][1])["intercept"]


def plot_figures(workdir: str, rows: Sequence[dict], seeds: Sequence[int]) -> list[str]:
  """Writes the four figures (see ``FIGURES``) to ``workdir``; returns their paths."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  colors = plt.get_cmap("tab10")
  curves = {}
  for r in rows:
    per_seed = []
    for seed in seeds:
      path = os.path.join(run_dir(workdir, r["variant"], seed), "metrics.jsonl")
      if os.path.exists(os.path.join(os.path.dirname(path), "summary.json")):
        with open(path) as f:
          per_seed.append(run_curves([json.loads(line) for line in f if line.strip()]))
    curves[r["variant"]] = {
      key: _mean_curve([c[key] for c in per_seed]) for key in ("error_step", "error_epoch")
    }
    for key in ("distance", "initial_distance"):
      curves[r["variant"]][key] = _mean_curve([c[key] for c in per_seed])

  def label(r):
    return f"{r['variant']} ({r['label']})" if r["label"] != r["variant"] else r["variant"]

  paths = []
  for name, key, xlabel in (
    (FIGURES[0], "error_epoch", "epochs (log scale)"),
    (FIGURES[1], "error_step", "updates (log scale)"),
  ):
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, r in enumerate(rows):
      xs, ys = curves[r["variant"]][key]
      if len(xs):
        ax.plot(xs, 100 * ys, color=colors(i % 10), label=label(r))
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test error (%), mean over seeds")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(workdir, name))
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for i, r in enumerate(rows):
    steps, dist = curves[r["variant"]]["distance"]
    if len(steps) < 2:
      continue
    ax.plot(steps, dist, color=colors(i % 10), label=label(r))
    if r["weight_distance_slope"] is not None:
      first, _ = curves[r["variant"]]["initial_distance"]
      ax.plot(
        first,
        r["weight_distance_slope"] * np.log(first) + _intercept(first, curves[r["variant"]]),
        "--",
        color=colors(i % 10),
        linewidth=0.8,
        label=f"  fit {r['weight_distance_slope']:.2f} log t, R²={r['weight_distance_r2']:.3f}",
      )
  ax.set_xscale("log")
  ax.set_xlabel("updates t (log scale)")
  ax.set_ylabel("||w_t - w_0||, mean over seeds")
  ax.set_title("||w - w0||; dashed: log fit over the initial lr phase (Hoffer Fig. 2)", fontsize=9)
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  paths.append(os.path.join(workdir, FIGURES[2]))
  fig.savefig(paths[-1], dpi=80)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6.4, 3.8))
  sb = next((r for r in rows if r["variant"] == "sb"), None)
  measured = [r for r in rows if r["test_accuracy_mean"] is not None]
  if sb is not None and sb["test_accuracy_mean"] is not None:
    ref, ref_name = sb["test_accuracy_mean"], "SB"
    paper_ref = sb.get("paper_accuracy")
  else:
    ref, ref_name, paper_ref = 0.0, "0", None
  x = np.arange(len(measured))
  paper_gaps = [
    r["paper_accuracy"] - paper_ref
    if paper_ref is not None and r.get("paper_accuracy") is not None
    else None
    for r in measured
  ]
  width = 0.4 if any(g is not None for g in paper_gaps) else 0.7
  ax.bar(
    x,
    [r["test_accuracy_mean"] - ref for r in measured],
    width,
    yerr=[r["test_accuracy_std"] for r in measured],
    capsize=3,
    color=[colors(rows.index(r) % 10) for r in measured],
    label="measured (± seed std)",
  )
  if any(g is not None for g in paper_gaps):
    ax.bar(
      x + width,
      [0.0 if g is None else g for g in paper_gaps],
      width,
      color="lightgray",
      edgecolor="gray",
      label="Hoffer Table 1",
    )
    ax.legend(fontsize=7)
  ax.axhline(0.0, color="black", linewidth=0.8)
  ax.set_xticks(x + (width / 2 if width == 0.4 else 0), [r["label"] for r in measured], fontsize=8)
  ax.set_ylabel(f"test accuracy - {ref_name} (points)")
  ax.set_title("Generalization gap to the small batch", fontsize=10)
  ax.grid(alpha=0.3, axis="y")
  fig.tight_layout()
  paths.append(os.path.join(workdir, FIGURES[3]))
  fig.savefig(paths[-1], dpi=80)
  plt.close(fig)
  return paths


@dataclasses.dataclass(frozen=True)
class Setup:
  """What the flags ask for: the configs per variant and the paper's numbers."""

  configs: dict[str, ml_collections.ConfigDict]
  preset: str
  paper_accuracy: dict[str, float] | None
  paper_dataset: str | None


def setup_from_flags() -> Setup:
  """Builds each variant's config from --config, its overrides, --preset and --variants."""
  spec = config_flags.get_config_filename(FLAGS["config"])
  path, sep, arg = spec.partition(":")
  if sep:
    raise ValueError(
      f"--config={spec!r}: give the file without ':{arg}'; the driver builds one config per "
      "variant (choose them with --variants) and the size with --preset"
    )
  module = load_config_module(path)
  overrides = config_flags.get_override_values(FLAGS["config"])
  paper_dataset = getattr(module, "PAPER_DATASET", None)
  preset = resolve_preset(FLAGS.preset, FLAGS.config.dataset, paper_dataset)
  variants = parse_variants(FLAGS.variants)
  configs = {v: variant_config(module, v, preset, overrides) for v in variants}
  num_train = load_data(next(iter(configs.values()))).num_train
  for config in configs.values():
    schedule_records(config, num_train, overrides)
  return Setup(configs, preset, getattr(module, "PAPER_ACCURACY", None), paper_dataset)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    # Orbax logs every checkpoint at INFO; the progress lines say enough.
    logging.set_verbosity(logging.WARNING)
  retain_freed_host_memory()  # before JAX starts: see bigbatch_jax/training/host_memory.py
  try:
    seeds = parse_seeds(FLAGS.seeds)
    setup = setup_from_flags()
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  # Seeds of one variant compile the same programs: the persistent cache
  # compiles them once (about 4 s per run on two CPU cores).
  jax.config.update("jax_compilation_cache_dir", os.path.join(FLAGS.workdir, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  some = next(iter(setup.configs.values()))
  print(
    f"Table 1: {len(setup.configs)} variants x {len(seeds)} seeds, preset {setup.preset}, "
    f"{some.model} on {some.dataset}, B_S={some.base_batch_size}, B_L={some.large_batch_size}; "
    f"workdir {FLAGS.workdir}",
    flush=True,
  )
  try:
    run_table(
      setup.configs,
      seeds,
      FLAGS.workdir,
      paper_accuracy=setup.paper_accuracy,
      paper_dataset=setup.paper_dataset,
      preset=setup.preset,
      echo=lambda line: print(line, file=sys.stdout, flush=True),
      hessian=FLAGS.hessian,
    )
  except Preempted as stopped:  # the same command resumes the run and then the table
    command = shlex.join([sys.executable, "-m", "experiments.table1", *sys.argv[1:]])
    print(f"{stopped}\ncommand: {command}", file=sys.stderr, flush=True)
    sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
  app.run(main)
