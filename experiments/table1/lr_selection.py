"""Each row's learning rate chosen on a validation split, before its seeds measure the test set.

The validation-tuned protocol (``--variants=recipes``): every row, SB and LB
included, gets the same budget, :data:`LR_FACTORS` times its default rate
(``config.regime.lr``: SGD's base rate, scaled by the row's own rule; LARS's
and LAMB's gamma of ``rows.ROW_SETTINGS``) crossed with the
:data:`SELECTION_SEEDS`, trained on the training set less a held-out
:data:`VALIDATION_FRACTION` (``bigbatch_jax.data.validation``, the same
split for every row, seed and rate) and evaluated on the held-out part. The
rate with the best mean validation accuracy over the selection seeds is the
row's rate (:func:`choose`); the table's seeds then train on the whole
training set at it and measure the test set as before. The test set never
takes part in the choice.

Why these numbers: five rates a factor 2 apart span 16x around the default,
enough to bracket an optimum whose default is off by up to 4x in either
direction. When the best rate is still the grid's end, the grid is extended
beyond that end by :data:`EXTENSION_FACTORS` of the end rate (two more
rates, a factor 2 apart), at most :data:`MAX_EXTENSIONS` times, so that an
optimum up to 32x from the default is still bracketed; an end that stays
best after that is reported as the edge (the optimum may lie beyond). Two selection
seeds (distinct from the table's 0-9) make the choice a mean, not one run's
noise, at twice one population's cost per row. Each row's grid, and each
extension, is one population (``config.population_grid``), resumable like
any run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import ml_collections
import numpy as np

from bigbatch_jax.configs.common import grid_config
from bigbatch_jax.training import json_files, parse_variant, population_spec
from experiments.table1.devices import placed
from experiments.table1.runner import check_same_config, finished, read_json

LR_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
# Beyond the end rate, nearest first: below the lowest rate (divided by
# these) or above the highest (multiplied by them).
EXTENSION_FACTORS = (2.0, 4.0)
MAX_EXTENSIONS = 2
SELECTION_SEEDS = (100, 101)
VALIDATION_FRACTION = 0.1
SELECTION_DIR = "lr_selection"
SELECTION_FILE = "selection.json"


def grid_lrs(lr: float) -> tuple[float, ...]:
  """The row's grid: ``lr`` times each of :data:`LR_FACTORS`, increasing."""
  if not lr > 0:
    raise ValueError(f"config.regime.lr={lr!r}: the grid's centre must be > 0")
  return tuple(float(lr * f) for f in LR_FACTORS)


def extension_lrs(lrs: Sequence[float], edge: str) -> tuple[float, ...]:
  """The rates beyond the grid's ``edge`` ("lowest" or "highest"), increasing."""
  if edge == "lowest":
    return tuple(sorted(float(lrs[0] / f) for f in EXTENSION_FACTORS))
  if edge == "highest":
    return tuple(float(lrs[-1] * f) for f in EXTENSION_FACTORS)
  raise ValueError(f"edge={edge!r}: expected 'lowest' or 'highest'")


def selection_config(
  config: ml_collections.ConfigDict,
  num_train: int | None = None,
  lrs: Sequence[float] | None = None,
) -> ml_collections.ConfigDict:
  """The row's grid population on the validation split (a copy; ``config`` is unchanged).

  Args:
    config: the row's config (its ``regime.lr`` is the grid's centre).
    num_train: the full training set's size; a growing batch capped there
      (``batch_growth_max``) is capped at the kept part instead.
    lrs: the population's rates; default the grid (``grid_lrs``).
  """
  selection = config.copy_and_resolve_references()
  selection.validation_fraction = VALIDATION_FRACTION
  lrs = grid_lrs(config.regime.lr) if lrs is None else tuple(lrs)
  selection.population_grid = grid_config({"regime.lr": lrs})
  selection.seeds = SELECTION_SEEDS
  selection.seed = SELECTION_SEEDS[0]
  if (
    parse_variant(config.variant).grow_batch
    and num_train is not None
    and config.batch_growth_max == num_train
  ):
    selection.batch_growth_max = num_train - round(VALIDATION_FRACTION * num_train)
  return selection


def choose(lrs: Sequence[float], accuracies: Mapping[float, Sequence[float | None]]) -> dict:
  """The rate with the best mean validation accuracy over the selection seeds.

  Args:
    lrs: the grid, increasing.
    accuracies: rate -> its validation accuracy per selection seed (None: the
      member diverged or did not finish; such a rate is not eligible).

  Returns:
    ``lrs``, ``validation_accuracy_per_seed`` and ``validation_accuracy_mean``
    (per rate, in grid order; the mean None where a seed is missing),
    ``selected_lr``, ``ties`` (every rate whose mean equals the best; the
    smallest is selected) and ``edge`` ("lowest" or "highest" when the
    selected rate is at the grid's end, else None).

  Raises:
    ValueError: no rate has all its seeds.
  """
  per_seed = [list(accuracies[lr]) for lr in lrs]
  means = [
    None if not seeds or any(a is None for a in seeds) else float(np.mean(seeds))
    for seeds in per_seed
  ]
  eligible = [m for m in means if m is not None]
  if not eligible:
    raise ValueError(
      f"no learning rate of the grid {list(lrs)} finished on every selection seed: each "
      "diverged or stopped; widen the grid towards smaller rates"
    )
  best = max(eligible)
  ties = [lr for lr, m in zip(lrs, means, strict=True) if m == best]
  selected = ties[0]
  edge = "lowest" if selected == lrs[0] else "highest" if selected == lrs[-1] else None
  return {
    "lrs": list(lrs),
    "validation_accuracy_per_seed": per_seed,
    "validation_accuracy_mean": means,
    "selected_lr": selected,
    "ties": ties,
    "edge": edge,
  }


def _member_accuracies(summary: dict, lrs: Sequence[float]) -> dict[float, list[float | None]]:
  """Rate -> validation accuracy (%) per selection seed, from a grid population's summary."""
  if summary.get("evaluated_split") != "validation":
    raise ValueError(
      f"the selection population evaluated {summary.get('evaluated_split')!r}, not the "
      "validation split; delete its directory and rerun"
    )
  accuracies: dict[float, list[float | None]] = {lr: [] for lr in lrs}
  for member in summary["members"]:
    lr = member["hyperparameters"]["regime.lr"]
    accuracy = member.get("test_accuracy")
    accuracies[lr].append(None if accuracy is None else 100 * accuracy)
  return accuracies


def _run_population(config, directory: str, train_fn, echo, head: str) -> dict:
  lrs = population_spec.grid_values(config)["regime.lr"]
  if finished(directory):
    check_same_config(config, directory)
    echo(f"{head}: done before, skipped")
    return _member_accuracies(read_json(os.path.join(directory, "summary.json")), lrs)
  echo(f"{head}: {len(lrs)} rates x {len(SELECTION_SEEDS)} seeds as one population")
  try:
    summary = train_fn(config, directory)
  except FloatingPointError as e:
    echo(f"{head}: every member diverged: {e}")
    return {lr: [None] * len(SELECTION_SEEDS) for lr in lrs}
  if not summary.get("finished"):
    raise RuntimeError(f"{head}: stopped before its planned updates; rerun the same command")
  return _member_accuracies(summary, lrs)


def _run_singly(config, directory: str, train_fn, echo, head: str) -> dict:
  """Each (rate, seed) of the population as its own run in ``directory/lr_RATE/seed_S``."""
  accuracies: dict[float, list[float | None]] = {}
  for lr in population_spec.grid_values(config)["regime.lr"]:
    accuracies[lr] = []
    for seed in SELECTION_SEEDS:
      single = config.copy_and_resolve_references()
      single.population_grid, single.seeds, single.seed = None, None, seed
      single.regime.lr = lr
      run = os.path.join(directory, f"lr_{lr:g}", f"seed_{seed}")
      if finished(run):
        check_same_config(single, run)
        summary = read_json(os.path.join(run, "summary.json"))
      else:
        echo(f"{head}: lr {lr:g} seed {seed}")
        try:
          summary = train_fn(single, run)
        except FloatingPointError as e:
          echo(f"{head}: lr {lr:g} seed {seed} diverged: {e}")
          summary = {"test_accuracy": None, "evaluated_split": "validation", "finished": True}
        if not summary.get("finished"):
          raise RuntimeError(f"{head}: {run} stopped before its planned updates; rerun")
      if summary.get("evaluated_split") != "validation":
        raise ValueError(f"{run} evaluated {summary.get('evaluated_split')!r}, not validation")
      accuracy = summary.get("test_accuracy")
      accuracies[lr].append(None if accuracy is None else 100 * accuracy)
  return accuracies


def select_lr(
  row: str,
  config: ml_collections.ConfigDict,
  workdir: str,
  train_fn: Callable[[ml_collections.ConfigDict, str], dict],
  echo: Callable[[str], None],
  population: bool = True,
  num_train: int | None = None,
  member_devices: int = 1,
) -> dict:
  """Runs (or reads) ``row``'s grid on the validation split and chooses its rate.

  The grid is extended beyond its end while the best rate is there (see the
  module's docstring). Returns :func:`choose`'s record over every rate
  trained, with ``extensions`` (the rates each extension added),
  ``selection_seeds`` and ``validation_fraction`` added, also written to
  ``workdir/lr_selection/ROW/selection.json``. ``member_devices``: the CPU
  devices the grid's members may split over (``devices.placed``).
  """
  directory = os.path.join(workdir, SELECTION_DIR, row)
  head = f"lr selection {row}"

  def run(lrs: Sequence[float], name: str) -> dict:
    selection = selection_config(config, num_train, lrs)
    if population:
      selection = placed(selection, len(lrs) * len(SELECTION_SEEDS), member_devices)
      return _run_population(selection, os.path.join(directory, name), train_fn, echo, head)
    return _run_singly(placed(selection, 1, member_devices), directory, train_fn, echo, head)

  accuracies = run(grid_lrs(config.regime.lr), "grid")
  extensions = []
  while True:
    lrs = tuple(sorted(accuracies))
    try:
      record = choose(lrs, accuracies)
    except ValueError as e:
      raise ValueError(f"{head}: {e}") from None
    if record["edge"] is None or len(extensions) == MAX_EXTENSIONS:
      break
    beyond = extension_lrs(lrs, record["edge"])
    echo(f"{head}: the best rate is the grid's {record['edge']}; adding {list(beyond)}")
    accuracies |= run(beyond, f"grid_{record['edge']}_{len(extensions) + 1}")
    extensions.append(list(beyond))
  record["extensions"] = extensions
  record |= {"selection_seeds": list(SELECTION_SEEDS), "validation_fraction": VALIDATION_FRACTION}
  json_files.write_json_atomic(os.path.join(directory, SELECTION_FILE), record, indent=2)
  echo(f"{head}: {describe(record)}")
  return record


def describe(record: dict) -> str:
  """One line: the grid's mean validation accuracies, the selected rate, ties and edge."""
  cells = ", ".join(
    f"{lr:g}: " + ("-" if m is None else f"{m:.2f}")
    for lr, m in zip(record["lrs"], record["validation_accuracy_mean"], strict=True)
  )
  line = f"validation accuracy (%) by lr {{{cells}}}; selected lr {record['selected_lr']:g}"
  if len(record["ties"]) > 1:
    line += f" (tied with {', '.join(f'{t:g}' for t in record['ties'][1:])})"
  if record["edge"]:
    line += f" (the grid's {record['edge']} rate: the best may lie beyond it)"
  return line


def selected_configs(
  configs: Mapping[str, ml_collections.ConfigDict], selections: Mapping[str, dict]
) -> dict[str, ml_collections.ConfigDict]:
  """Each row's config at its selected rate (copies)."""
  chosen = {}
  for row, config in configs.items():
    copy = config.copy_and_resolve_references()
    copy.regime.lr = selections[row]["selected_lr"]
    chosen[row] = copy
  return chosen
