"""The config's population read once: its seeds and its grid, checked (called by ``resolve``).

``config.seeds`` and ``config.population_grid`` become a
:class:`~bigbatch_jax.training.population_grid.Population` here; below the
run's spec the population is only read.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Mapping
from typing import Any

import ml_collections

from bigbatch_jax.training.population_grid import GRID_KEYS, USED_BY, Population
from bigbatch_jax.training.run_plan import RunPlan


def member_seeds(config: ml_collections.ConfigDict) -> tuple[int, ...] | None:
  """The population's seeds from ``config.seeds``; None for a single run of ``config.seed``.

  ``config.seeds`` is None (a single run of ``config.seed``), an int (the
  same single run; it must equal ``config.seed``, which it names) or a tuple
  of distinct non-negative ints (a population, even of one member).
  """
  seeds = config.seeds
  if seeds is None:
    return None
  if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
    if int(seeds) != config.seed:
      raise ValueError(
        f"config.seeds={seeds} (an int: a single run) differs from config.seed={config.seed}; "
        f"set one of them, or --config.seeds='({seeds},)' for a population of one"
      )
    return None
  if not isinstance(seeds, tuple | list) or not seeds:
    raise ValueError(
      f"config.seeds={seeds!r}; valid: None or an int (a single run of that seed) or a "
      "non-empty tuple of distinct non-negative ints such as '(0, 1, 2)' (a population)"
    )
  bad = [s for s in seeds if not isinstance(s, numbers.Integral) or isinstance(s, bool) or s < 0]
  if bad:
    raise ValueError(f"config.seeds={seeds!r} holds {bad!r}; every seed must be an int >= 0")
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"config.seeds={seeds!r} repeats a seed; members need distinct seeds")
  return tuple(int(s) for s in seeds)


def grid_values(config: ml_collections.ConfigDict) -> dict[str, tuple[float, ...]]:
  """``config.population_grid`` checked: config key -> its distinct values; ``{}`` for none.

  The grid is a dict, or the ``ConfigDict`` of
  ``bigbatch_jax.configs.common.grid_config`` (the form a config copy keeps).
  Raises ``ValueError`` naming the key for an unknown key, a key that is not
  per-member (it changes shapes or the plan: batch size, ghost size, model,
  epochs, ...), the seed keys, an empty or non-tuple value, a repeated value
  or a value out of its range.
  """
  grid = config.population_grid
  if grid is None:
    return {}
  if isinstance(grid, ml_collections.ConfigDict):
    # configs.common.grid_config's form: a ConfigDict that keeps the dotted keys.
    grid = dict(grid.items())
  if not isinstance(grid, Mapping):
    raise ValueError(
      f"config.population_grid={grid!r}; valid: None or a dict of config key -> tuple of "
      "values, e.g. --config.population_grid='{\"regime.lr\": (0.03, 0.1, 0.3)}'"
    )
  checked = {}
  for key, values in grid.items():
    _check_key(config, key)
    if not isinstance(values, tuple | list) or not values:
      raise ValueError(
        f"config.population_grid[{key!r}]={values!r}; valid: a non-empty tuple of numbers, "
        f"e.g. (0.03, 0.1)"
      )
    rule = GRID_KEYS[key][0]
    for value in values:
      if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"config.population_grid[{key!r}] holds {value!r}; valid: numbers {rule}")
      if not (value > 0 if rule == "> 0" else value >= 0):
        raise ValueError(
          f"config.population_grid[{key!r}] holds {value!r}; each value must be {rule}"
        )
    if len(set(values)) != len(values):
      raise ValueError(
        f"config.population_grid[{key!r}]={tuple(values)!r} repeats a value; members need "
        "distinct values"
      )
    checked[key] = tuple(float(v) for v in values)
  return checked


def _check_key(config: ml_collections.ConfigDict, key) -> None:
  valid = f"per-member keys: {sorted(GRID_KEYS)}"
  if key in ("seed", "seeds"):
    raise ValueError(
      f"config.population_grid names {key!r}, the population's seed axis: give the seeds as "
      "config.seeds (crossed with the grid), not in the grid"
    )
  if key in GRID_KEYS:
    return
  if not isinstance(key, str) or not _has_key(config, key):
    raise ValueError(f"config.population_grid names {key!r}, which is not a config key; {valid}")
  raise ValueError(
    f"config.population_grid names config.{key}, which is not per-member: members share "
    f"every shape and the plan (batch and ghost sizes, model, data, epochs, ...); {valid}. "
    f"Run one population per value of {key}"
  )


def _has_key(config: ml_collections.ConfigDict, key: str) -> bool:
  node: Any = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def population_of(config: ml_collections.ConfigDict, plan: RunPlan, seeds) -> Population | None:
  """The members of a run: the grid's values crossed with ``seeds``; None for a single run.

  Args:
    config: the run config (``population_grid``, ``seed``).
    plan: its plan (a grid key must be one the variant uses).
    seeds: ``population.member_seeds(config)``: the population's seeds, or
      None (with a grid: the one seed ``config.seed``).

  Returns:
    A :class:`Population` (grid values outermost, in the grid's key order,
    then the seeds), or None without seeds and grid.
  """
  grid = grid_values(config)
  for key in grid:
    part = GRID_KEYS[key][1]
    if part is not None and not USED_BY[part](plan.variant):
      raise ValueError(
        f"config.population_grid names {key!r}, but variant {plan.variant.name!r} has no "
        f"{part!r} part that uses it; leave it out of the grid or use a variant with {part!r}"
      )
  if seeds is None and not grid:
    return None
  seeds = (config.seed,) if seeds is None else tuple(seeds)
  keys = tuple(grid)
  combos = list(itertools.product(*(grid[k] for k in keys)))
  return Population(
    seeds=tuple(s for _ in combos for s in seeds),
    hyperparameters=tuple(dict(zip(keys, c, strict=True)) for c in combos for _ in seeds),
    keys=keys,
  )
