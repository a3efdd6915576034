"""The table's rows: their names, the flags that choose them, and one config per row.

A row is a variant of ``bigbatch_jax.training.variants`` with an optional
``@`` modifier that changes the run, not the method:

* ``@2x``: every epoch of the regime doubled (its length and its drop
  epochs); ``sb@2x`` is the convergence check of the small-batch baseline.
* ``@r4``: the large batch is 4 x the base batch (r = 4), the ratios of
  Jaiswal & Taura's own experiments (B 32/64/128, r <= 4).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

import ml_collections
import numpy as np

from bigbatch_jax.configs.common import override
from bigbatch_jax.training import make_plan, parse_variant
from bigbatch_jax.training.events import event_after

# Hoffer Table 1's columns, the convergence check, then the noise remedies
# (Hoffer sec. 4; Jaiswal & Taura) and the reviewers' questions.
LABELS = {
  "sb": "SB",
  "sb@2x": "SB, 2x epochs",
  "lb": "LB",
  "lb+lr": "+LR",
  "lb+lr+gbn": "+GBN",
  "lb+lr+gbn+ra": "+RA",
  "lb+lr+ra": "+LR+RA (no GBN)",
  "lb+mult": "+mult",
  "lb+mult+ra": "+mult+RA",
  "lb+linear": "linear",
  "lb+linear+white": "linear+white",
  "lb+linear@r4": "linear, r=4",
  "lb+linear+white@r4": "linear+white, r=4",
}
# The large-batch recipes compared with SB's epochs: Hoffer's +LR+GBN, Goyal
# et al.'s linear scaling with warmup, LARS (You et al. 2017), LAMB (You et al.
# 2019), Jaiswal & Taura's linear scaling with and without white noise, and
# Smith et al.'s growing batch, which starts from the small batch (B_S, then
# B_S / drop_factor at each drop, capped at the training set). ``lb+grow``
# starts at B_L, where on small data its first growth is already capped: it
# stays a variant but is not Smith et al.'s row.
RECIPE_LABELS = {
  "lb+linear+warmup+gbn": "Goyal (warmup, BN per 32)",
  "lb+linear+warmup": "warmup, BN over B_L",
  "lb+lars": "LARS",
  "lb+lamb": "LAMB",
  "sb+grow": "Smith grow from B_S",
  "lb+grow": "grow from B_L",
}
# The sets --variants accepts by name. ``default`` holds the rows of the
# claims tested with 10 seeds per row within the time budget of the default
# command (the seeds' power: docs/statistics.md); the regime-adapted rows
# without Ghost BN (``lb+lr+ra``, ``lb+mult+ra``, about 5 x +LR's cost each),
# the r = 4 rows and ``sb@2x`` are in the named sets ``reviewers``, ``paper``
# and ``all`` (every row of ``LABELS``).
VARIANT_SETS = {
  "default": (
    "sb",
    "lb",
    "lb+lr",
    "lb+lr+gbn",
    "lb+lr+gbn+ra",
    "lb+mult",
    "lb+linear",
    "lb+linear+white",
  ),
  "all": tuple(LABELS),
  "paper": ("sb", "sb@2x", "lb", "lb+lr", "lb+lr+gbn", "lb+lr+gbn+ra"),
  # The reviewers' questions (Ghost BN beyond RA, multiplicative noise, white
  # noise at r = 16 and r = 4), with SB and +RA to compare to.
  "reviewers": (
    "sb",
    "lb+lr+gbn+ra",
    "lb+lr+ra",
    "lb+mult",
    "lb+mult+ra",
    "lb+linear",
    "lb+linear+white",
    "lb+linear@r4",
    "lb+linear+white@r4",
  ),
  "recipes": (
    "sb",
    "lb",
    "lb+lr+gbn",
    "lb+linear+warmup+gbn",
    "lb+lars",
    "lb+lamb",
    "lb+linear",
    "lb+linear+white",
    "sb+grow",
  ),
}
# Goyal et al. sec. 2.3 normalise batch norm over each worker's n = 32
# examples, not over the whole large batch: their row is Ghost BN with ghost
# batches of 32 (a --config.ghost_batch_size override still wins).
GOYAL_GHOST_BATCH_SIZE = 32
# LARS and LAMB as their papers run them: linear warmup over 5 epochs from 0,
# then polynomial decay (power 2) to 0 (You et al. 2017 sec. 4-5; You et al.
# 2020 sec. 4), at a rate of their own scale (gamma; the SGD rate 0.1 is not
# one): LARS's gamma multiplies eta ||w|| / ||g|| with eta = 1e-3, so a
# layer's step is gamma * 1e-3 of its ||w|| per unit gradient direction and
# gamma runs in units: 10 here; LAMB's per-layer step is gamma ||w||, of
# Adam's step-size scale: 0.01 here. Both are round centres of the
# validation grid (``selection.LR_FACTORS``: 2.5 to 40, 0.0025 to 0.04), not
# tuned values.
PAPER_SCHEDULE = {
  "regime.decay": "poly",
  "regime.poly_warmup_epochs": 5.0,
  "regime.poly_power": 2.0,
}
ROW_SETTINGS = {
  "lb+linear+warmup+gbn": {"ghost_batch_size": GOYAL_GHOST_BATCH_SIZE},
  "lb+lars": {**PAPER_SCHEDULE, "regime.lr": 10.0},
  "lb+lamb": {**PAPER_SCHEDULE, "regime.lr": 0.01},
}
# Ghost BN against Ghost Noise Injection (Kosson, Fan & Jaggi 2024), with and
# without regime adaptation.
NORMALIZER_LABELS = {
  "lb+lr+gni": "+LR+GNI",
  "lb+lr+gni+ra": "+LR+GNI+RA",
}
VARIANT_SETS["normalizers"] = (
  "sb",
  "lb",
  "lb+lr",
  "lb+lr+gbn",
  "lb+lr+gni",
  "lb+lr+ra",
  "lb+lr+gbn+ra",
  "lb+lr+gni+ra",
)
LABELS |= RECIPE_LABELS | NORMALIZER_LABELS
DEFAULT_VARIANTS = VARIANT_SETS["default"]
MODIFIERS = ("2x", "r4")
PRESETS = ("auto", "quick", "full")
# The config-module option each preset asks for (None: the config as the paper has it).
PRESET_OPTIONS = {"quick": "table1", "full": None}
EVALS_PER_RUN = 20
LOGS_PER_RUN = 100
# The most updates of one compiled call (lax.scan) the table asks for: the
# dispatch saved per update levels off well before this (docs/table1_preset.md).
MAX_STEPS_PER_CALL = 50


def split_row(row: str) -> tuple[str, str | None]:
  """``"sb@2x"`` -> ``("sb", "2x")``; the variant and modifier are checked."""
  variant, sep, modifier = row.partition("@")
  parse_variant(variant)  # raises with the offending part and the valid ones
  if sep and modifier not in MODIFIERS:
    raise ValueError(f"row {row!r}: unknown modifier {modifier!r}; valid: {', '.join(MODIFIERS)}")
  return variant, modifier if sep else None


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
  """``"sb,lb+lr"`` or a set name (``default``, ``paper``) -> the rows, each checked."""
  if text.strip() in VARIANT_SETS:
    return list(VARIANT_SETS[text.strip()])
  rows = [v.strip() for v in text.split(",") if v.strip()]
  if not rows:
    raise ValueError(
      f"--variants={text!r}: expected rows like sb,lb+lr or a set: {', '.join(VARIANT_SETS)}"
    )
  for row in rows:
    split_row(row)
  if len(set(rows)) != len(rows):
    raise ValueError(f"--variants={text!r} lists a variant twice")
  return rows


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


def apply_modifier(config: ml_collections.ConfigDict, modifier: str | None) -> None:
  """Applies a row's ``@`` modifier (see the module docstring) in place."""
  if modifier == "2x":
    config.regime.epochs = 2 * config.regime.epochs
    # Drops declared as fractions of training follow the epochs by themselves.
    if "drop_epochs" in config.regime:
      config.regime.drop_epochs = tuple(2 * e for e in config.regime.drop_epochs)
    if config.num_epochs is not None:
      config.num_epochs = 2 * config.num_epochs
  elif modifier == "r4":
    config.large_batch_size = 4 * config.base_batch_size


def variant_config(
  module: ModuleType, row: str, preset: str, overrides: Mapping[str, Any] = ()
) -> ml_collections.ConfigDict:
  """``module.get_config("VARIANT[,OPTION]")`` for the preset, the row's ``ROW_SETTINGS``, the
  overrides, then the modifier."""
  overrides = dict(overrides)
  if "variant" in overrides:
    raise ValueError("--config.variant cannot be set here; choose variants with --variants")
  variant, modifier = split_row(row)
  option = PRESET_OPTIONS[preset]
  arg = variant if option is None else f"{variant},{option}"
  try:
    config = module.get_config(arg)
  except ValueError as e:
    raise ValueError(f"preset {preset!r} uses get_config({arg!r}) of {module.__file__}: {e}") from e
  override(config, ROW_SETTINGS.get(variant, {}))
  override(config, overrides)
  config.variant = variant
  apply_modifier(config, modifier)
  return config


def schedule_records(
  config: ml_collections.ConfigDict, num_train: int, overrides: Iterable[str] = ()
) -> None:
  """Sets the evaluation and logging periods so that every run has the same resolution, and
  the updates per call (``whole_calls``)."""
  plan = make_plan(config, num_train, num_devices=1)
  if "eval_every_epochs" not in overrides:
    config.eval_every_epochs = plan.regime.epochs / EVALS_PER_RUN
  if "log_every_steps" not in overrides:
    config.log_every_steps = max(1, plan.num_steps // LOGS_PER_RUN)
  if "steps_per_call" not in overrides:
    config.steps_per_call = whole_calls(config, plan)


def whole_calls(config: ml_collections.ConfigDict, plan) -> int:
  """The most updates per call (up to ``MAX_STEPS_PER_CALL``) whose multiples hold every event.

  A call ends early at a log, an evaluation or a checkpoint
  (``bigbatch_jax.training.events.call_length``), so ``steps_per_call`` changes
  no record; but each shorter call is one more compiled length. A length
  that every event step (and the last step) is a multiple of compiles once;
  a row without one (events at uneven steps) keeps one update per call.
  """
  events = [d for d in range(1, plan.num_steps + 1) if event_after(config, plan, d)]
  events.append(plan.num_steps)
  for length in range(min(MAX_STEPS_PER_CALL, config.log_every_steps), 1, -1):
    if all(d % length == 0 for d in events):
      return length
  return 1


def label(row: str) -> str:
  return LABELS.get(row, row)


def is_mnist(dataset: str, data) -> bool:
  """Whether the data is MNIST, given any way: ``tfds:mnist``, or an npz of its shape.

  MNIST's shape: 60 000 training and 10 000 test 28 x 28 images of 10 classes.
  The paper's numbers (Hoffer Table 1, F1) are printed beside the measured
  ones only then.
  """
  if dataset == "tfds:mnist":
    return True
  x_train = getattr(data, "x_train", None)
  return (
    dataset.startswith("npz:")
    and x_train is not None
    and data.num_train == 60000
    and data.num_test == 10000
    and data.num_classes == 10
    and int(np.prod(x_train.shape[1:])) == 784
    and x_train.shape[1] == 28
  )
