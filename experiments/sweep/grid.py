"""The sweep's grid: its presets, its flags' parsing, and one config per (curve, batch size).

Every run keeps the base regime's epochs (the sweep asks where the gap opens
at equal epochs, Keskar et al. 2017 Fig. 1; Hoffer et al. sec. 5 closes it
with more updates, which is another experiment). The smallest batch size is
the base batch B_S: its run (``sb``) is the first point of the plain and the
remedy curves, and its seed-0 run is where B_simple is measured along
training (McCandlish et al. 2018). The tuned curve (``tuned_bB``) is the
sqrt rule (``lb+lr``; ``sb`` at B_S) at a learning rate each batch size
selects on the validation split (``experiments.table1.lr_selection``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from bigbatch_jax.configs.common import override
from bigbatch_jax.training import parse_variant

PLAIN = "lb"
TUNED = "lb+lr tuned"  # the tuned curve's name in sweep.json and the figure
TUNED_VARIANT = "lb+lr"
EVALS_PER_RUN = 4
# Sizes per preset: "default" is docs/sweep.md's figure (its time is measured
# there); "tiny" is the tests' end-to-end run, seconds per run.
PRESETS: dict[str, dict[str, Any]] = {
  "default": {
    "batch_sizes": (32, 64, 128, 256, 512, 1024, 2048, 4096),
    "config": {"mnist1d_num_samples": 10000, "regime.epochs": 20.0},
    "noise_epochs": (1.0, 5.0, 10.0, 15.0, 20.0),
    "tuned_lr": True,
  },
  "tiny": {
    "batch_sizes": (16, 64),
    "config": {
      "mnist1d_num_samples": 600,
      "regime.epochs": 1.0,
      "model_options.hidden": 32,
      "model_options.depth": 2,
    },
    "noise_epochs": (0.5, 1.0),
    "tuned_lr": False,
  },
}


def parse_batch_sizes(text: str) -> list[int]:
  """``"32,64,128"`` -> ``[32, 64, 128]``: at least two distinct, ascending, positive."""
  try:
    sizes = [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    raise ValueError(f"--batch_sizes={text!r}: expected integers like 32,128,512") from None
  if len(sizes) < 2 or min(sizes) < 1 or sorted(set(sizes)) != sizes:
    raise ValueError(
      f"--batch_sizes={text!r}: expected at least two distinct positive integers in ascending "
      "order, like 32,128,512 (the first is the small-batch baseline)"
    )
  return sizes


def parse_noise_epochs(text: str) -> list[float]:
  """``"1,5,10"`` -> ``[1.0, 5.0, 10.0]``: at least one, positive, strictly ascending."""
  try:
    epochs = [float(s) for s in text.split(",") if s.strip()]
  except ValueError:
    raise ValueError(f"--noise_epochs={text!r}: expected numbers like 1,5,10,15,20") from None
  if not epochs or min(epochs) <= 0 or sorted(set(epochs)) != epochs:
    raise ValueError(
      f"--noise_epochs={text!r}: expected one or more distinct positive epochs in ascending "
      "order, like 1,5,10,15,20"
    )
  return epochs


def parse_remedy(name: str) -> str:
  """The remedy curve's variant: a large-batch variant that keeps the epochs."""
  variant = parse_variant(name)  # raises naming the bad part and the valid ones
  if variant.name == PLAIN:
    raise ValueError(f"--remedy={name!r} is the plain curve; choose a remedy such as lb+lr+gbn")
  if not variant.large_batch:
    raise ValueError(f"--remedy={name!r} must start with 'lb' (a large-batch variant)")
  if variant.regime_adaptation:
    raise ValueError(
      f"--remedy={name!r}: regime adaptation ('ra') changes the epochs, and the sweep compares "
      "batch sizes at equal epochs; choose e.g. lb+lr+gbn"
    )
  return variant.name


def row(variant: str, batch_size: int) -> str:
  return f"{variant}_b{batch_size}"


def tuned_row(batch_size: int) -> str:
  return row("tuned", batch_size)


def _config(
  base: ml_collections.ConfigDict, variant: str, batch_size: int, b_small: int
) -> ml_collections.ConfigDict:
  config = base.copy_and_resolve_references()
  config.variant = variant
  config.base_batch_size = b_small
  config.large_batch_size = batch_size
  config.batch_size = batch_size
  return config


def sweep_configs(
  base: ml_collections.ConfigDict,
  batch_sizes: Sequence[int],
  remedy: str,
  noise_epochs: Sequence[float],
  overrides: Mapping[str, Any] = (),
  tuned_lr: bool = False,
) -> dict[str, ml_collections.ConfigDict]:
  """One config per run, keyed by the run's row name (``lb_b256``), ``sb`` first.

  With ``tuned_lr`` the tuned rows (``tuned_bB``) follow at the sqrt rule's
  rate, the centre of their validation grids; the driver sets each one's
  selected rate before its seeds train.

  Raises:
    ValueError: an override of the variant or batch size, or a noise epoch
      outside (0, the regime's epochs].
  """
  overrides = dict(overrides)
  if "variant" in overrides or "batch_size" in overrides:
    raise ValueError(
      "--config.variant and --config.batch_size cannot be set here; use --remedy and --batch_sizes"
    )
  base = base.copy_and_resolve_references()
  base.unlock()  # a preset may set keys --config's file leaves out (model_options.hidden)
  override(base, overrides)
  if "eval_every_epochs" not in overrides:
    base.eval_every_epochs = base.regime.epochs / EVALS_PER_RUN
  base.progress_bar = False  # the driver prints one line per run
  bad = [e for e in noise_epochs if not 0 < e <= base.regime.epochs]
  if bad:
    raise ValueError(
      f"--noise_epochs={','.join(f'{e:g}' for e in noise_epochs)}: {bad[0]:g} is outside "
      f"(0, {base.regime.epochs:g}], the regime's epochs"
    )
  small = batch_sizes[0]
  configs = {row("sb", small): _config(base, "sb", small, small)}
  for variant in (PLAIN, remedy):
    for b in batch_sizes[1:]:
      configs[row(variant, b)] = _config(base, variant, b, small)
  if tuned_lr:
    for b in batch_sizes:
      configs[tuned_row(b)] = _config(base, "sb" if b == small else TUNED_VARIANT, b, small)
  return configs
