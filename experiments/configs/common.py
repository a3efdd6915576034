"""What the paper-row configs share: the argument, the row's settings, the smoke-run shrink."""

from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from experiments.configs import default


def parse_arg(arg: str, valid_options: Iterable[str] = ("quick",)) -> tuple[str, set[str]]:
  """``"VARIANT[,option...]"`` -> (variant, options); unknown options are an error."""
  variant, *options = arg.split(",")
  valid = sorted(valid_options)
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(f"unknown config options {unknown} in {arg!r}; valid: {', '.join(valid)}")
  return variant, set(options)


def paper_row(
  variant: str,
  *,
  model: str,
  dataset: str,
  regime: Mapping[str, Any],
  base_batch_size: int = 128,
  large_batch_size: int = 4096,
  ghost_batch_size: int | None = 128,
  grad_clip_norm: float | None = 5.0,
  **settings: Any,
) -> ml_collections.ConfigDict:
  """The default config with one paper row's model, data, batch sizes and regime.

  Hoffer et al. section 6: large batch 4096, ghost batch 128, and (bigBatch
  main_gbn.py) gradient clipping at global norm 5 on every update. Further
  keyword settings set config keys; a mapping value sets keys of a sub-config
  (e.g. ``model_options={"depth": 16}``).
  """
  config = default.get_config()
  config.variant = variant
  config.model = model
  config.dataset = dataset
  config.base_batch_size = base_batch_size
  config.large_batch_size = large_batch_size
  config.ghost_batch_size = ghost_batch_size
  config.grad_clip_norm = grad_clip_norm
  for key, value in regime.items():
    config.regime[key] = value
  for key, value in settings.items():
    if isinstance(value, Mapping):
      for sub_key, sub_value in value.items():
        config[key][sub_key] = sub_value
    else:
      config[key] = value
  return config


def shrink_to_quick(config: ml_collections.ConfigDict, epochs: float = 3.0) -> None:
  """The same regime shape over ``epochs`` epochs (times r with "ra"): a smoke run.

  The drops become fractions of training, so a later ``--config.regime.epochs``
  moves them along (the plan derives the drop epochs).
  """
  declared = config.regime.epochs
  config.regime.drop_fractions = tuple(e / declared for e in config.regime.drop_epochs)
  config.regime.drop_epochs = ()
  config.regime.epochs = epochs
  config.log_every_steps = 10


def override(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
  """Sets dotted keys, e.g. ``{"model_options.hidden": 8}``, as ``--config.KEY=VALUE`` would."""
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    target = config
    for part in path:
      target = target[part]
    target[leaf] = value
