"""A population that does not fit in memory, split into the largest groups that fit.

A population's compiled step holds every member's state, batch and
activations, so its memory grows with the number of members P. When the step
of all P members needs more memory per device than is free, the population
is trained in groups of G members, one group after another: members never
interact (``population.py``), so member i of a group computes what member i
of the whole population computes, up to the float rounding of batched matrix
products (``tests/test_population_groups.py``: rel 1e-5).

G is decided from compiled memory, not guessed (:func:`choose_grouping`):
the step of 1 and of 2 members is compiled (abstract states: nothing is
initialised), the per-member cost fitted as bytes(n) = a + b n, G is the
largest n < P whose fitted bytes fit, and G is confirmed by compiling it (one
member fewer while it does not fit); the groups then train with the calls
compiled for their size. The groups are G members each in the
population's order (the last may be smaller). The grouping is written to
``groups.json`` in the workdir and read back on resume, so a resumed run
trains the groups it started with whatever memory is free then.

Each group trains in ``groups/members_A-B`` like a population of its own
(checkpoints, resume, metrics with the population's member indices); a
group whose last checkpoint is at the run's end and whose summary is written
is not trained again. Once every group is done, :func:`merge_groups` writes
at the workdir what a one-group population writes: ``metrics.jsonl``,
``summary.json`` (all members in order), the figures and a checkpoint of the
whole population (the groups' final states concatenated on the host).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import numpy as np
from jax.sharding import Mesh

from bigbatch_jax.training import json_files
from bigbatch_jax.training.checkpoint import Checkpointer
from bigbatch_jax.training.compiled_steps import CompiledSteps, compile_ahead
from bigbatch_jax.training.members import Members
from bigbatch_jax.training.metrics import read_metrics
from bigbatch_jax.training.population_grid import Population
from bigbatch_jax.training.setup import set_up_run
from bigbatch_jax.training.summary import write_outputs

if TYPE_CHECKING:
  from bigbatch_jax.training.spec import RunSpec

log = logging.getLogger(__name__)

GROUPS_FILE = "groups.json"
_GIB = 2.0**30


@dataclasses.dataclass(frozen=True)
class Grouping:
  """A population of ``members`` trained in groups of ``group_size`` (the last may be smaller).

  Attributes:
    members: the population's size P.
    group_size: G, the members trained together.
    bytes_per_group: the compiled step's memory per device for G members.
    bytes_free: the memory per device that was free when G was decided.
  """

  members: int
  group_size: int
  bytes_per_group: int
  bytes_free: int

  def bounds(self) -> list[tuple[int, int]]:
    """Each group's members as ``(first, end)``: ``range(first, end)``, in order."""
    starts = range(0, self.members, self.group_size)
    return [(s, min(s + self.group_size, self.members)) for s in starts]

  def describe(self) -> str:
    sizes = [end - first for first, end in self.bounds()]
    return (
      f"a population of {self.members} members trains in {len(sizes)} groups of "
      f"{self.group_size} members (sizes {sizes}), one after another: "
      f"{self.bytes_per_group / _GIB:.3g} GiB per device per group "
      f"({self.bytes_per_group} bytes) against {self.bytes_free / _GIB:.3g} GiB free "
      f"({self.bytes_free} bytes)"
    )


def member_steps(
  spec: RunSpec,
  mesh: Mesh,
  dataset,
  population: Population,
  size: int,
  check_memory: bool = False,
) -> CompiledSteps:
  """The run's calls compiled for the first ``size`` members of ``population``.

  Compiles every call ``train_and_evaluate`` compiles ahead
  (``compiled_steps.compile_ahead``) on abstract states (``jax.eval_shape``
  of the members' initialisation: no memory is taken). Their
  ``memory_bytes`` is the largest need per device; a group of ``size``
  members trains with them (they take any members' values). With
  ``check_memory`` a call that needs more than is free raises ``MemoryError``
  (``parallel.compile_train_step``).
  """
  members = part(population, 0, size)
  run = set_up_run(
    spec,
    mesh,
    dataset.num_classes,
    dataset.input_shape,
    seeds=members.seeds,
    grid=members.arrays(),
    abstract=True,
  )
  steps = CompiledSteps(run, mesh, dataset.input_shape, spec.plan, size, check_memory=check_memory)
  compile_ahead(steps, spec.plan, spec.events.steps_per_call)
  return steps


def choose_grouping(error: str, measure: Callable[[int], int], members: int, free: int) -> Grouping:
  """The largest group size G < ``members`` whose compiled step fits in ``free`` bytes.

  Args:
    error: the message of the whole population's ``MemoryError``.
    measure: n -> the compiled step's bytes per device for n members
      (:func:`member_steps`' ``memory_bytes``).
    members: the population's size P (>= 2).
    free: memory per device (``parallel.available_memory_bytes``).

  Raises:
    MemoryError: ``error``'s message and the need of one member, when even
      one member does not fit.
  """
  needs = {1: measure(1)}
  if needs[1] > free:
    raise MemoryError(
      f"{error}. Split into groups, one member alone still needs {needs[1] / _GIB:.2f} GiB "
      f"per device ({needs[1]} bytes against {free} free)"
    )
  size = 1
  if members > 2:
    needs[2] = measure(2)
    per_member = max(needs[2] - needs[1], 1)
    fixed = needs[1] - per_member
    size = int(min(members - 1, max(1, (free - fixed) // per_member)))
    # The fit predicts; the compiled step decides.
    while size > 1:
      if size not in needs:
        needs[size] = measure(size)
      if needs[size] <= free:
        break
      size -= 1
  return Grouping(members, size, needs[size], free)


def read_grouping(workdir: str, members: int) -> Grouping | None:
  """The grouping a run in ``workdir`` started with; None when it trained as one population."""
  path = os.path.join(workdir, GROUPS_FILE)
  if not os.path.exists(path):
    return None
  saved = json_files.read_json(
    path,
    "It records how the population was split into groups: put a good copy back, or start the "
    "run afresh in a new --workdir",
  )
  grouping = Grouping(**saved)
  if grouping.members != members:
    raise ValueError(
      f"{path} splits a population of {grouping.members} members, but the config's population "
      f"has {members}; train this population in a new --workdir"
    )
  return grouping


def write_grouping(workdir: str, grouping: Grouping) -> None:
  if jax.process_index() == 0:
    path = os.path.join(workdir, GROUPS_FILE)
    json_files.write_json_atomic(path, dataclasses.asdict(grouping), indent=2)


def part(population: Population, first: int, end: int) -> Population:
  """Members ``first`` to ``end - 1`` of ``population``, in order."""
  return dataclasses.replace(
    population,
    seeds=population.seeds[first:end],
    hyperparameters=population.hyperparameters[first:end],
  )


def group_dir(workdir: str, first: int, end: int) -> str:
  """Where the group of members ``first`` to ``end - 1`` trains."""
  return os.path.join(workdir, "groups", f"members_{first}-{end - 1}")


def group_done(directory: str, end_step: int) -> bool:
  """Whether the group in ``directory`` trained to ``end_step`` and wrote its summary."""
  if not os.path.exists(os.path.join(directory, "summary.json")):
    return False
  return Checkpointer(os.path.join(directory, "checkpoints")).latest_step() == end_step


def merge_groups(
  workdir: str,
  spec: RunSpec,
  population: Population,
  grouping: Grouping,
  end_step: int,
) -> dict:
  """Writes at ``workdir`` the outputs of the whole population from its finished groups.

  ``metrics.jsonl`` (the groups' records in a one-group population's order:
  by step, training records before evaluation records, by member),
  ``summary.json`` (every member in order; ``wall_time_s`` the groups' sum),
  the figures, and checkpoint ``end_step`` holding every member.

  Returns:
    The summary.

  Raises:
    FloatingPointError: when every member of the population diverged.
  """
  plan = spec.plan
  directories = [group_dir(workdir, first, end) for first, end in grouping.bounds()]
  records = [r for d in directories for r in read_metrics(d)]
  records.sort(key=lambda r: (r["step"], "test_accuracy" in r, r.get("member", 0)))
  groups = [json_files.read_json(os.path.join(d, "summary.json")) for d in directories]
  settings = spec.settings
  checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"), settings.max_checkpoints_to_keep)
  members = Members(population, plan, checkpoints, settings.divergence_loss_factor)
  for group in groups:
    for entry in group["members"]:
      if "diverged" in entry:
        members.diverged[entry["member"]] = entry["diverged"]
  if not members.live():
    last = max(members.diverged.values(), key=lambda d: d["step"])
    raise FloatingPointError(f"every member of the population diverged; the last: {last['error']}")
  if jax.process_index() == 0:
    json_files.write_lines_atomic(os.path.join(workdir, "metrics.jsonl"), records)
  if checkpoints.latest_step() != end_step:
    states = [
      Checkpointer(os.path.join(d, "checkpoints")).restore_raw(end_step) for d in directories
    ]
    checkpoints.save(end_step, jax.tree.map(lambda *xs: np.concatenate(xs), *states))
  checkpoints.close()
  wall_time = float(sum(group["wall_time_s"] for group in groups))
  summary = members.summary(spec, plan, records, wall_time)
  write_outputs(summary, records, workdir, title=plan.variant.name)
  return summary
