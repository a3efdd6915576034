"""What the paper-row configs share: the argument, the row's settings, the smoke-run shrink."""

from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from bigbatch_jax.configs import default


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
  ghost_batch_size: int | None = None,
  grad_clip_norm: float | None = 5.0,
  **settings: Any,
) -> ml_collections.ConfigDict:
  """The default config with one paper row's model, data, batch sizes and regime.

  Hoffer et al. section 6: large batch 4096, ghost batch 128 (None: the base
  batch, so the reference protocol's per-column mini-batch can apply), and (bigBatch
  main_gbn.py) gradient clipping at global norm 5 on every update. Further
  keyword settings set config keys; a mapping value sets keys of a sub-config
  (e.g. ``model_options={"depth": 16}``).
  """
  config = default.get_config()
  row = {
    "variant": variant,
    "model": model,
    "dataset": dataset,
    "base_batch_size": base_batch_size,
    "large_batch_size": large_batch_size,
    "ghost_batch_size": ghost_batch_size,
    "grad_clip_norm": grad_clip_norm,
    "regime": regime,
  }
  for key, value in (row | settings).items():
    if isinstance(value, Mapping):
      for sub_key, sub_value in value.items():
        config[key][sub_key] = sub_value
    else:
      config[key] = value
  return config


def cifar_row(arg: str, **row: Any) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of a CIFAR row of Hoffer et al. Table 1 (C1, C3, ResNet-44, VGG, WRN-16-4).

  The argument is VARIANT[,quick]: a variant of bigbatch_jax.training.variants
  (sb, lb, lb+lr, lb+lr+gbn, lb+lr+gbn+ra, lb+mult, lb+linear+white, ...) and
  optionally "quick", the same regime shape over 3 epochs (x r with "ra"), a
  smoke run. Data: the row's tfds:cifar10 or tfds:cifar100 (`tfds build
  cifar10 --file_format=array_record`, likewise cifar100), normalised with the
  ImageNet statistics and augmented with pad 4, random 32x32 crop and
  horizontal flip, as the reference (preprocess.get_transform); evaluated in
  batches of 1000. ``row`` holds the :func:`paper_row` arguments (model,
  dataset, regime, ...); unless it says otherwise, the batch sizes and the
  clipping are :func:`paper_row`'s: base batch 128, large batch 4096, ghost
  batch 128 (Hoffer sec. 6), gradient clipping at global norm 5 on every
  update (bigBatch main_gbn.py).
  """
  variant, options = parse_arg(arg)
  config = paper_row(variant, augment="cifar", eval_batch_size=1000, **row)
  if "quick" in options:
    shrink_to_quick(config)
  return config


# The columns of Hoffer et al. Table 1, in order.
TABLE1_COLUMNS = ("sb", "lb", "lb+lr", "lb+lr+gbn", "lb+lr+gbn+ra")


def table1_accuracy(*accuracies: float) -> dict[str, float]:
  """A row's accuracies (%) in the order of ``TABLE1_COLUMNS``, keyed by variant."""
  if len(accuracies) != len(TABLE1_COLUMNS):
    raise ValueError(f"{len(accuracies)} accuracies for the {len(TABLE1_COLUMNS)} {TABLE1_COLUMNS}")
  return dict(zip(TABLE1_COLUMNS, accuracies, strict=True))


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


class GridConfig(ml_collections.ConfigDict):
  """A population grid: a ConfigDict that keeps dotted keys and their order through copies.

  ``copy_and_resolve_references`` builds each copy as ``self.__class__()``
  and then copies ``allow_dotted_keys`` but not ``sort_keys``; making both
  this class's defaults keeps them in every copy. The key order matters: the
  grid's members are crossed in it (``training.population_grid``).
  """

  def __init__(self, initial_dictionary=None, type_safe: bool = True):
    super().__init__(
      initial_dictionary, type_safe=type_safe, allow_dotted_keys=True, sort_keys=False
    )


def grid_config(grid: Mapping[str, Any] | None) -> ml_collections.ConfigDict | None:
  """``config.population_grid``'s value in the form that survives copying the config.

  The grid's keys are dotted config keys (``"regime.lr"``). Held as a plain
  dict, ``ConfigDict.copy_and_resolve_references`` turns it into a
  ``ConfigDict``, which refuses dotted keys (a ``ValueError`` on every copy);
  a :class:`GridConfig` is copied as itself, keys, their order and values
  unchanged, and written to JSON as the dict. None stays None.
  """
  if grid is None or isinstance(grid, GridConfig):
    return grid
  return GridConfig(dict(grid))


def override(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
  """Sets dotted keys, e.g. ``{"model_options.hidden": 8}``, as ``--config.KEY=VALUE`` would.

  A ``population_grid`` given as a dict is stored by :func:`grid_config`.
  """
  for key, value in overrides.items():
    if key == "population_grid" and isinstance(value, Mapping):
      value = grid_config(value)
    *path, leaf = key.split(".")
    target = config
    for part in path:
      target = target[part]
    target[leaf] = value
