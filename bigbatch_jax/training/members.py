"""The host side of a run's members: records, divergence and summary, per member.

A single run is one member without a member axis: its records and summary
are today's. A population (``population.py``) has P members: each training
and evaluation record carries ``member`` (its index) and ``seed``; a member
that diverges is reported (step, learning rate, what was not finite) and
left frozen while the others go on; the run stops with the error only when
every member has diverged (the "stop" policy).
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from bigbatch_jax.training import json_files
from bigbatch_jax.training.checkpoint import Checkpointer
from bigbatch_jax.training.guard import NONFINITE_KINDS, DivergenceGuard
from bigbatch_jax.training.metrics import read_metrics
from bigbatch_jax.training.plan import RunPlan, lr_schedule
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
  """The members of a run: ``seeds`` None for a single run, else a population's seeds."""

  def __init__(
    self,
    seeds: tuple[int, ...] | None,
    plan: RunPlan,
    checkpoints: Checkpointer,
    loss_factor: float | None,
  ):
    self.seeds = seeds
    self.plan = plan
    count = 1 if seeds is None else len(seeds)
    self.guards = [DivergenceGuard(plan, checkpoints, loss_factor) for _ in range(count)]
    self.diverged: dict[int, dict] = {}  # member -> {"step", "error"}

  @property
  def population(self) -> bool:
    return self.seeds is not None

  def fields(self, member: int) -> dict:
    """What a record of ``member`` carries to name it (nothing for a single run)."""
    return {} if self.seeds is None else {"member": member, "seed": self.seeds[member]}

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
    seed = self.seeds[member]
    lr = float(lr_schedule(self.plan)(step))
    self.diverged[member] = {"step": step, "lr": lr, "error": str(error)}
    message = f"population member {member} (seed {seed}) is frozen: {error}"
    log.warning(message)
    print(f"WARNING: {message}", flush=True)
    if not self.live():
      raise FloatingPointError(f"every member of the population diverged; the last: {error}")

  def summary(self, config, plan: RunPlan, records: list[dict], wall_time: float) -> dict:
    """The run's summary: today's for a single run; a population's lists its members."""
    if self.seeds is None:
      return run_summary(config, plan, records, wall_time)
    members = []
    for member, seed in enumerate(self.seeds):
      if member in self.diverged:
        members.append({"member": member, "seed": seed, "diverged": self.diverged[member]})
        continue
      own = [r for r in records if r.get("member") == member]
      summary = run_summary(config, plan, own, wall_time)
      members.append({"member": member, **summary, "seed": seed})
    shared = run_summary(config, plan, [], wall_time)
    for key in ("seed", "test_accuracy", "test_error", "best_test_accuracy", "train_accuracy"):
      shared.pop(key)
    shared.pop("weight_distance")
    shared.pop("skipped_steps")
    finished = [m["test_accuracy"] for m in members if m.get("test_accuracy") is not None]
    shared["mean_test_accuracy"] = float(np.mean(finished)) if finished else None
    # The population is finished when every member that did not diverge is.
    shared["finished"] = all(m.get("finished", True) for m in members)
    return {**shared, "seeds": list(self.seeds), "members": members}


def split_population(workdir: str, directories: dict[int, str]) -> None:
  """Writes each member of the finished population in ``workdir`` as a single run's workdir.

  ``directories`` maps each seed to its directory, which gets what a single
  run of that seed writes: ``config.json`` (``seed`` set, ``seeds`` None),
  ``metrics.jsonl`` (the member's records without ``member``/``seed``),
  ``summary.json`` (written last: it marks the run finished) and the final
  checkpoint; a diverged member gets ``failed.json`` instead, as a diverged single run does.
  """
  summary = json_files.read_json(os.path.join(workdir, "summary.json"))
  config = json_files.read_json(os.path.join(workdir, "config.json"))
  records = read_metrics(workdir)
  checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"))
  step = checkpoints.latest_step()
  state = checkpoints.restore_raw(step)
  checkpoints.close()
  members = summary["members"]
  for entry in members:
    member, seed = entry["member"], entry["seed"]
    directory = directories[seed]
    os.makedirs(directory, exist_ok=True)
    if "diverged" in entry:
      failure = {"variant": summary["variant"], "seed": seed, **entry["diverged"]}
      json_files.write_json_atomic(os.path.join(directory, "failed.json"), failure, indent=2)
      continue
    json_files.write_json_atomic(
      os.path.join(directory, "config.json"),
      {**config, "seed": seed, "seeds": None},
      indent=2,
      sort_keys=True,
    )
    own = [
      {k: v for k, v in record.items() if k not in ("member", "seed")}
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
      {k: v for k, v in entry.items() if k != "member"},
      indent=2,
    )
