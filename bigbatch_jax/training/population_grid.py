"""Per-member hyperparameters: a grid of config values crossed with a population's seeds.

``config.population_grid = {"regime.lr": (0.03, 0.1, 0.3)}`` with
``config.seeds = (0, 1, 2)`` is one population of 9 members: every value of
the grid (several keys are crossed) with every seed. Only hyperparameters
that keep every shape and the run's plan can differ between members
(:data:`GRID_KEYS`): the base learning rate, the weight decay, the white
noise's alpha and gamma, the multiplicative noise's variance and LARS's trust
coefficient. Member i then computes what the single run of its seed with its
values computes: its values replace the config's in the plan
(:func:`member_plan`) and every derived quantity follows from them as in a
single run (the scaling rule's (B / B_S)**p of Hoffer et al. eq. 7, Goyal et
al.'s warmup, the regime's drops of section 5).

In the compiled step the values are arrays with a leading member axis,
mapped with the state (``population.population_train_step``), so one
compilation serves the whole grid; on the host (records, summaries, the
split into single-run workdirs) they are the grid's Python floats.
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from bigbatch_jax.training.plan import RunPlan

# key -> (what a member's value must be, the variant part that uses it or None).
GRID_KEYS: dict[str, tuple[str, str | None]] = {
  "regime.lr": ("> 0", None),
  "regime.weight_decay": (">= 0", None),
  "noise_alpha": (">= 0", "white"),
  "noise_gamma": (">= 0", "white"),
  "mult_noise_variance": (">= 0", "mult"),
  "lars_trust_coefficient": ("> 0", "lars"),
}
_USED_BY = {
  "white": lambda variant: variant.white_noise,
  "mult": lambda variant: variant.multiplicative_noise,
  "lars": lambda variant: variant.optimizer == "lars",
}


@dataclasses.dataclass(frozen=True)
class Population:
  """A population's members: member i trains ``seeds[i]`` with ``hyperparameters[i]``.

  Attributes:
    seeds: each member's seed (a grid's members share seeds).
    hyperparameters: each member's grid values, config key -> value (``{}``
      without a grid).
    keys: the grid's keys, in the order they are crossed (empty without a grid).
  """

  seeds: tuple[int, ...]
  hyperparameters: tuple[dict[str, float], ...]
  keys: tuple[str, ...] = ()

  @property
  def size(self) -> int:
    return len(self.seeds)

  def arrays(self) -> dict[str, jax.Array]:
    """Each key's values over the members, ``[P]`` float32: what the compiled step maps over."""
    return {k: jnp.asarray([h[k] for h in self.hyperparameters], jnp.float32) for k in self.keys}


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
    if part is not None and not _USED_BY[part](plan.variant):
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


def member_plan(plan: RunPlan, values: Mapping[str, Any]) -> RunPlan:
  """``plan`` with a member's values in place of the config's (Python floats or traced arrays).

  Only the base values change: the schedule, the scaling rule and the warmup
  are derived from them by the same functions as in a single run.
  """
  regime = plan.regime
  changes: dict[str, Any] = {}
  if "regime.lr" in values or "regime.weight_decay" in values:
    changes["regime"] = dataclasses.replace(
      regime,
      lr=values.get("regime.lr", regime.lr),
      weight_decay=values.get("regime.weight_decay", regime.weight_decay),
    )
  if "mult_noise_variance" in values:
    changes["noise_variance"] = values["mult_noise_variance"]
  if "lars_trust_coefficient" in values:
    changes["lars_trust_coefficient"] = values["lars_trust_coefficient"]
  return dataclasses.replace(plan, **changes) if changes else plan


def white_noise(config: ml_collections.ConfigDict, values: Mapping[str, Any]) -> tuple[Any, Any]:
  """(alpha, gamma) of the white noise: a member's values, else the config's."""
  return values.get("noise_alpha", config.noise_alpha), values.get(
    "noise_gamma", config.noise_gamma
  )


def member_config_json(config_json: dict, seed: int, values: Mapping[str, float]) -> dict:
  """The saved config (``config.json``'s dict) of the single run a member equals."""
  single = {**config_json, "seed": seed, "seeds": None, "population_grid": None}
  for key, value in values.items():
    *path, leaf = key.split(".")
    node = single
    for part in path:
      node[part] = dict(node[part])
      node = node[part]
    node[leaf] = value
  return single
