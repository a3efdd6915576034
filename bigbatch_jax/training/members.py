"""The host side of a run's members: records, divergence and summary, per member.

A single run is one member without a member axis: its records and summary
are today's. A population (``population.py``) has P members: each training
and evaluation record carries ``member`` (its index), ``seed`` and, with a
grid (``population_grid.py``), ``hyperparameters`` (its grid values); a
member that diverges is reported (step, learning rate, what was not finite)
and left frozen while the others go on; the run stops with the error only
when every member has diverged (the "stop" policy).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

import jax
import numpy as np

from bigbatch_jax.training import json_files
from bigbatch_jax.training.checkpoint import Checkpointer
from bigbatch_jax.training.guard import NONFINITE_KINDS, DivergenceGuard
from bigbatch_jax.training.metrics import member_label, read_metrics
from bigbatch_jax.training.plan import RunPlan, lr_schedule
from bigbatch_jax.training.population_grid import Population, member_config_json, member_plan
from bigbatch_jax.training.summary import run_summary

log = logging.getLogger(__name__)


@jax.jit
def _mark_diverged(state, member: jax.Array, step: jax.Array):
  # The population step freezes every member whose nonfinite_step is set.
  return state.replace(
    nonfinite_step=state.nonfinite_step.at[member].set(step),
    nonfinite_kind=state.nonfinite_kind.at[member].set(0),
  )


class Members:
  """The members of a run: ``population`` None for a single run.

  ``population`` is a ``population_grid.Population`` (or, for a population
  of seeds, the tuple of its seeds). ``first_member``: the index its first
  member has in the whole population, for one group of a population split
  to fit in memory (``population_groups.py``): records, reports and the
  summary name members by that index; arguments and arrays are the group's.
  ``stop_when_all_diverged``: False for such a group, which trains on when
  all its members have diverged (the others of the population may not
  have: the whole population's check raises, ``population_groups.py``).
  """

  def __init__(
    self,
    population: Population | tuple[int, ...] | None,
    plan: RunPlan,
    checkpoints: Checkpointer,
    loss_factor: float | None,
    first_member: int = 0,
    stop_when_all_diverged: bool = True,
  ):
    if isinstance(population, tuple | list):
      population = Population(tuple(population), tuple({} for _ in population))
    self.grid = population
    self.first_member = first_member
    self.stop_when_all_diverged = stop_when_all_diverged
    self.seeds = None if population is None else population.seeds
    self.plan = plan
    count = 1 if population is None else population.size
    self.plans = [plan] * count
    if population is not None:
      self.plans = [member_plan(plan, values) for values in population.hyperparameters]
    self.guards = [DivergenceGuard(p, checkpoints, loss_factor) for p in self.plans]
    self.diverged: dict[int, dict] = {}  # member -> {"step", "lr", "error"}

  @property
  def population(self) -> bool:
    return self.seeds is not None

  def values(self, member: int) -> dict[str, float]:
    """Member ``member``'s grid values (``{}`` without a grid)."""
    return {} if self.grid is None else self.grid.hyperparameters[member]

  def fields(self, member: int) -> dict:
    """What a record of ``member`` carries to name it (nothing for a single run)."""
    if self.seeds is None:
      return {}
    fields = {"member": self.first_member + member, "seed": self.seeds[member]}
    if self.grid.keys:
      fields["hyperparameters"] = self.values(member)
    return fields

  def live(self) -> list[int]:
    """The members still training."""
    return [i for i in range(len(self.guards)) if i not in self.diverged]

  def split(self, values: dict) -> list[tuple[int, dict]]:
    """(member, its values) of each live member; ``values`` end with the member axis."""
    if self.seeds is None:
      return [(0, values)]
    return [(i, {k: np.asarray(v)[..., i] for k, v in values.items()}) for i in self.live()]

  def check_state(self, state):
    """Raises for a single run's recorded divergence; reports a population's members.

    Returns the state, with members that diverged at a logged loss marked
    (frozen from the next step on). Raises the last error once every member
    has diverged.
    """
    if self.seeds is None:
      self.guards[0].check_state(state)
      return state
    steps, kinds = jax.device_get((state.nonfinite_step, state.nonfinite_kind))
    for member in self.live():
      if steps[member] >= 0 and kinds[member] in NONFINITE_KINDS:
        what = f"non-finite {NONFINITE_KINDS[int(kinds[member])]}"
        step = int(steps[member])
        self._report(member, step, self.guards[member].error(step, what))
    return state

  def check_loss(self, state, member: int, step: int, loss: float):
    """The loss check of one member at a logging step; returns the state (marked if it fired)."""
    try:
      self.guards[member].check_loss(step, loss)
    except FloatingPointError as error:
      if self.seeds is None:
        raise
      self._report(member, step, error)
      state = _mark_diverged(state, np.int32(member), np.int32(step))
    return state

  def _report(self, member: int, step: int, error: FloatingPointError) -> None:
    lr = float(lr_schedule(self.plans[member])(step))
    self.diverged[member] = {"step": step, "lr": lr, "error": str(error)}
    name = member_label(self.seeds[member], self.values(member))
    message = f"population member {self.first_member + member} ({name}) is frozen: {error}"
    log.warning(message)
    print(f"WARNING: {message}", flush=True)
    if not self.live() and self.stop_when_all_diverged:
      raise FloatingPointError(f"every member of the population diverged; the last: {error}")

  def summary(self, spec, plan: RunPlan, records: list[dict], wall_time: float) -> dict:
    """The run's summary: today's for a single run; a population's lists its members."""
    if self.seeds is None:
      return run_summary(spec, plan, records, wall_time)
    members = []
    for member in range(len(self.seeds)):
      name = self.fields(member)
      if member in self.diverged:
        members.append({**name, "diverged": self.diverged[member]})
        continue
      own = [r for r in records if r.get("member") == name["member"]]
      summary = run_summary(spec, self.plans[member], own, wall_time)
      members.append({"member": name["member"], **summary, **name})
    shared = run_summary(spec, plan, [], wall_time)
    for key in ("seed", "test_accuracy", "test_error", "best_test_accuracy", "train_accuracy"):
      shared.pop(key)
    shared.pop("weight_distance")
    shared.pop("skipped_steps")
    if self.grid.keys:
      # What the grid sets differs between members: each member's entry holds it.
      shared.pop("lr")
      shared.pop("noise_variance")
      values = self.grid.hyperparameters
      shared["population_grid"] = {
        k: list(dict.fromkeys(v[k] for v in values)) for k in self.grid.keys
      }
    finished = [m["test_accuracy"] for m in members if m.get("test_accuracy") is not None]
    shared["mean_test_accuracy"] = float(np.mean(finished)) if finished else None
    if self.grid.keys:
      shared["grid_means"] = _grid_means(members, self.grid)
    # The population is finished when every member that did not diverge is.
    shared["finished"] = all(m.get("finished", True) for m in members)
    return {**shared, "seeds": list(self.seeds), "members": members}


def _grid_means(members: list[dict], grid: Population) -> list[dict]:
  """Per grid point: its values, the seeds that finished and their mean test accuracy."""
  points = list(dict.fromkeys(tuple(v.items()) for v in grid.hyperparameters))
  means = []
  for point in points:
    own = [m for m in members if tuple(m["hyperparameters"].items()) == point]
    done = [m for m in own if m.get("test_accuracy") is not None]
    accuracy = float(np.mean([m["test_accuracy"] for m in done])) if done else None
    finished_seeds = [m["seed"] for m in done]
    means.append(
      {"hyperparameters": dict(point), "seeds": finished_seeds, "mean_test_accuracy": accuracy}
    )
  return means


def split_population(workdir: str, directories: Mapping[int, str] | Callable[[dict], str]) -> None:
  """Writes each member of the finished population in ``workdir`` as a single run's workdir.

  ``directories`` maps each seed to its directory (a population of seeds),
  or is a function of a member's summary entry (``member``, ``seed`` and,
  with a grid, ``hyperparameters``) to its directory; a grid's members share
  seeds, so a grid needs the function. Each directory gets what the single run
  of the member's seed and values writes: ``config.json`` (``seed`` and the
  grid's keys set, ``seeds`` and ``population_grid`` None), ``metrics.jsonl``
  (the member's records without ``member``/``seed``/``hyperparameters``),
  ``summary.json`` (written last: it marks the run finished) and the final
  checkpoint; a diverged member gets ``failed.json`` instead, as a diverged
  single run does.
  """
  summary = json_files.read_json(os.path.join(workdir, "summary.json"))
  saved_config = json_files.read_json(os.path.join(workdir, "config.json"))
  members = summary["members"]
  if not callable(directories):
    if any("hyperparameters" in m for m in members):
      raise ValueError(
        f"the population in {workdir} has a grid ({summary.get('population_grid')}): its "
        "members share seeds, so directories must be a function of a member's entry "
        "(member, seed, hyperparameters) to its directory, not a dict of seeds"
      )
    by_seed = dict(directories)
    directories = lambda entry: by_seed[entry["seed"]]  # noqa: E731
  records = read_metrics(workdir)
  checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"))
  step = checkpoints.latest_step()
  state = checkpoints.restore_raw(step)
  checkpoints.close()
  naming = ("member", "seed", "hyperparameters")
  for entry in members:
    member, seed = entry["member"], entry["seed"]
    values = entry.get("hyperparameters", {})
    directory = directories(entry)
    os.makedirs(directory, exist_ok=True)
    if "diverged" in entry:
      failure = {"variant": summary["variant"], "seed": seed, **values, **entry["diverged"]}
      json_files.write_json_atomic(os.path.join(directory, "failed.json"), failure, indent=2)
      continue
    json_files.write_json_atomic(
      os.path.join(directory, "config.json"),
      member_config_json(saved_config, seed, values),
      indent=2,
      sort_keys=True,
    )
    own = [
      {k: v for k, v in record.items() if k not in naming}
      for record in records
      if record.get("member") == member
    ]
    json_files.write_lines_atomic(os.path.join(directory, "metrics.jsonl"), own)
    saved = Checkpointer(os.path.join(directory, "checkpoints"))
    saved.save(step, jax.tree.map(lambda x, m=member: x[m], state))
    saved.wait()
    saved.close()
    json_files.write_json_atomic(
      os.path.join(directory, "summary.json"),
      {k: v for k, v in entry.items() if k not in ("member", "hyperparameters")},
      indent=2,
    )
