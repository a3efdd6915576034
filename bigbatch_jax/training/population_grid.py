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
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

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
USED_BY = {
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


def white_noise(plan: RunPlan, values: Mapping[str, Any]) -> tuple[Any, Any]:
  """(alpha, gamma) of the white noise: a member's values, else the plan's."""
  return values.get("noise_alpha", plan.noise_alpha), values.get("noise_gamma", plan.noise_gamma)


def member_config_json(config_json: dict, seed: int, values: Mapping[str, float]) -> dict:
  """The saved config (``config.json``'s dict) of the single run a member equals.

  A member of a population split over ``member_devices`` groups trained on
  one group's devices: its single run has ``num_devices`` of one group
  (None, all devices, stays None: how many there were is not saved).
  """
  single = {**config_json, "seed": seed, "seeds": None, "population_grid": None}
  groups = config_json.get("member_devices", 1)
  if groups > 1:
    single["member_devices"] = 1
    if config_json.get("num_devices") is not None:
      single["num_devices"] = config_json["num_devices"] // groups
  for key, value in values.items():
    *path, leaf = key.split(".")
    node = single
    for part in path:
      node[part] = dict(node[part])
      node = node[part]
    node[leaf] = value
  return single
