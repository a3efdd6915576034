"""``train_and_evaluate``: the whole run, from a config to metrics, plots and checkpoints.

Only orchestration lives here: config -> resolved spec (``spec``, the
config's only reader below this entry point) -> model, optimizer and state
(``setup``) -> compiled step (``step``, ``parallel``) -> this loop -> outputs
(``metrics``, ``checkpoint``, ``summary``). docs/architecture.md maps the
modules to the papers.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from bigbatch_jax import data as data_lib
from bigbatch_jax import protocol as protocol_lib
from bigbatch_jax.training import events, parallel, population_groups
from bigbatch_jax.training import population as population_lib
from bigbatch_jax.training import spec as spec_lib
from bigbatch_jax.training import step as step_lib
from bigbatch_jax.training.checkpoint import Checkpointer
from bigbatch_jax.training.compiled_steps import CompiledSteps, compile_ahead
from bigbatch_jax.training.distributed import maybe_initialize_distributed, wait_for_all_processes
from bigbatch_jax.training.evaluation import evaluation_record
from bigbatch_jax.training.members import Members
from bigbatch_jax.training.metrics import MetricsLog
from bigbatch_jax.training.plan import RunPlan
from bigbatch_jax.training.preemption import Preempted, PreemptionWatch
from bigbatch_jax.training.run_limits import SkipLimit
from bigbatch_jax.training.setup import set_up_run
from bigbatch_jax.training.spec import RunSpec
from bigbatch_jax.training.state import TrainState
from bigbatch_jax.training.summary import write_outputs
from bigbatch_jax.training.workdir import check_and_save_config
from bigbatch_jax.training.workdir_lock import WorkdirLock

log = logging.getLogger(__name__)


def next_batches(batches, length: int, mesh: Mesh, members: bool = False) -> dict[str, jax.Array]:
  """The next ``length`` batches on the mesh: one batch, or stacked for ``train_steps``.

  ``members``: a population's batches, ``[P, B, ...]`` each.
  """
  if length == 1:
    return parallel.put_batch(next(batches), mesh, members=members)
  chunk = [next(batches) for _ in range(length)]
  stacked = {k: np.stack([b[k] for b in chunk]) for k in chunk[0]}
  return parallel.put_batch(stacked, mesh, stacked=True, members=members)


@dataclasses.dataclass
class _Loop:
  """The collaborators of the training loop (built once by ``train_and_evaluate``)."""

  spec: RunSpec
  plan: RunPlan
  mesh: Mesh
  dataset: Any
  steps: CompiledSteps
  eval_fn: Any
  checkpoints: Checkpointer
  metrics_log: MetricsLog
  members: Members
  bar: Any
  last_time: float = 0.0
  last_step: int = 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains ``config``'s model and variant, evaluating each epoch; resumes from ``workdir``.

  Writes to ``workdir``: ``metrics.jsonl`` (one record per logging or
  evaluation step), ``checkpoints/`` (orbax), ``summary.json``,
  ``error_curves.png`` and ``weight_distance.png``.

  Args:
    config: a run config (bigbatch_jax/configs/default.py lists its keys).
    workdir: output directory; an existing run of the same config resumes.

  Returns:
    The summary dict (also written to ``summary.json``).

  Raises:
    WorkdirLocked: when another live run holds ``workdir`` (docs/reliability.md).
    CheckpointWriteError: when a checkpoint cannot be written.
    Preempted: after SIGTERM or SIGINT during training, once the step every
      process reached is checkpointed (``preemption.py``); calling again
      with the same config and workdir resumes it.
  """
  maybe_initialize_distributed(spec_lib.run_settings(config))
  os.makedirs(workdir, exist_ok=True)
  # One writer per workdir: process 0 of a multi-host run writes its files.
  with WorkdirLock(workdir, writer=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """``train_and_evaluate`` while holding the workdir's lock."""
  # The config is read here, once: the protocol and the data first (the plan needs
  # the number of training examples), then the whole spec.
  protocol = protocol_lib.resolve_protocol(config)
  dataset = data_lib.load_data(spec_lib.data_spec(config), protocol)
  settings = spec_lib.run_settings(config)
  mesh = parallel.make_mesh(settings.num_devices, settings.member_devices)
  spec = spec_lib.resolve(
    config,
    num_train=dataset.num_train,
    num_devices=parallel.data_devices(mesh),
    process_count=jax.process_count(),
    protocol=protocol,
  )
  population = spec.population
  # Checks the augmentation against the data before any compute.
  data_lib.input_pipeline(spec.data, dataset, protocol)
  os.makedirs(workdir, exist_ok=True)
  check_and_save_config(config, workdir, spec_lib.record(spec))
  train = functools.partial(_train_members, spec, dataset, mesh)
  if population is None or population.size == 1:
    return train(workdir, population)
  grouping = population_groups.read_grouping(workdir, population.size)
  compiled = {}
  if grouping is None:
    try:
      # Compiled on the abstract state: a population whose state alone does not
      # fit is split into groups before any of it is allocated.
      whole = population_groups.member_steps(
        spec, mesh, dataset, population, population.size, check_memory=True
      )
    except MemoryError as error:
      failed = str(error)
      if spec.settings.member_devices > 1:
        raise MemoryError(
          f"{failed}. A population split over member_devices={spec.settings.member_devices} "
          "is not split further into groups; use member_devices=1 or fewer seeds"
        ) from None
    else:
      return train(workdir, population, steps=whole)
    grouping = _choose_grouping(failed, spec, dataset, mesh, population, workdir, compiled)
  return _train_groups(spec, workdir, population, grouping, train, compiled)


def _prepare(spec: RunSpec, dataset, mesh: Mesh, population, steps=None):
  """The run's set-up and its calls compiled ahead (``MemoryError`` if one does not fit).

  ``steps``: calls already compiled for the population's size.
  """
  seeds = None if population is None else population.seeds
  grid = None if population is None else population.arrays()
  run = set_up_run(spec, mesh, dataset.num_classes, dataset.input_shape, seeds=seeds, grid=grid)
  if steps is not None:
    return run, steps.for_run(run)
  plan = spec.plan
  steps = CompiledSteps(run, mesh, dataset.input_shape, plan, population and population.size)
  compile_ahead(steps, plan, spec.events.steps_per_call)
  return run, steps


def _choose_grouping(failed: str, spec: RunSpec, dataset, mesh, population, workdir, compiled):
  """The groups of a population whose step did not fit, decided and saved.

  ``compiled`` receives the calls compiled for each group size measured.
  """
  if Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() is not None:
    raise MemoryError(
      f"{failed}. {workdir} holds a checkpoint of this population trained as one group: "
      "resume it where it fits, or train it in a new --workdir (it is then split into groups)"
    )

  def measure(size: int) -> int:
    compiled[size] = population_groups.member_steps(spec, mesh, dataset, population, size)
    return compiled[size].memory_bytes

  free = parallel.available_memory_bytes(mesh)
  grouping = population_groups.choose_grouping(failed, measure, population.size, free)
  population_groups.write_grouping(workdir, grouping)
  return grouping


def _train_groups(spec: RunSpec, workdir: str, population, grouping, train, compiled):
  """Trains the groups one after another (finished ones are not trained again), then merges.

  ``compiled``: group size -> its calls, where the grouping's measure compiled them.
  """
  log.warning(grouping.describe())
  end_step = events.end_step_of(spec.events, spec.plan)
  for first, end in grouping.bounds():
    directory = population_groups.group_dir(workdir, first, end)
    if population_groups.group_done(directory, end_step):
      log.info("members %d-%d: trained to step %d in %s", first, end - 1, end_step, directory)
      continue
    log.info("members %d-%d of %d: training in %s", first, end - 1, population.size, directory)
    os.makedirs(directory, exist_ok=True)
    part = population_groups.part(population, first, end)
    train(directory, part, first_member=first, steps=compiled.get(end - first))
  return population_groups.merge_groups(workdir, spec, population, grouping, end_step)


def _train_members(
  spec: RunSpec,
  dataset,
  mesh: Mesh,
  workdir: str,
  population,
  *,
  steps=None,
  first_member: int | None = None,
) -> dict[str, Any]:
  """Trains ``population``'s members (None: the single run) in ``workdir``; their summary.

  ``steps``: the calls alone, compiled for the population's size;
  ``first_member``: the first member's index in the whole population when
  ``population`` is one of its groups (``population_groups.py``).
  """
  seeds = None if population is None else population.seeds
  plan, settings = spec.plan, spec.settings
  run, steps = _prepare(spec, dataset, mesh, population, steps)
  wait_for_all_processes("bigbatch_jax_before_checkpoints", settings.distributed_timeout_s)
  checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"), settings.max_checkpoints_to_keep)
  metrics_log = MetricsLog(os.path.join(workdir, "metrics.jsonl"), writer=jax.process_index() == 0)
  state, restored = checkpoints.restore_latest_good(run.state)
  if restored is not None:
    log.info("resumed %s at step %d", workdir, restored)
  start_step = 0 if restored is None else restored
  metrics_log.truncate_after(-1 if restored is None else restored)
  end_step = events.end_step_of(spec.events, plan)

  batches = _train_batches(spec, dataset, start_step, seeds)
  bar = _progress_bar(spec, start_step)
  loop = _Loop(
    spec,
    plan,
    mesh,
    dataset,
    steps,
    parallel.shard_eval_step(
      step_lib.eval_step if seeds is None else population_lib.population_eval_step,
      mesh,
      members=seeds is not None,
      model=run.model,
    ),
    checkpoints,
    metrics_log,
    _members(spec, population, checkpoints, dataset, state, restored, first_member),
    bar,
  )
  start_time = loop.last_time = time.perf_counter()
  loop.last_step = start_step
  with PreemptionWatch() as watch:
    try:
      with batches:
        step = previous = start_step
        # The signal flag is read between calls: every process stops after the same call.
        while step < end_step and not watch.should_stop(previous, step):
          length = events.call_length(step, end_step, spec.events, plan)
          call = steps.get(plan.batch_size_at(step), length)
          state, metrics = call(state, next_batches(batches, length, mesh, seeds is not None))
          state = _after_call(loop, state, metrics, step, length, end_step)
          previous, step = step, step + length
      if step < end_step:
        raise _checkpoint_and_stop(loop, watch, state, step, start_step)
    finally:
      bar.close()
      checkpoints.wait()

  # Every process's summary reads the writer's log, complete only once it is done.
  wait_for_all_processes("bigbatch_jax_metrics_written", settings.distributed_timeout_s)
  records = metrics_log.read()
  summary = loop.members.summary(spec, plan, records, time.perf_counter() - start_time)
  # A group's figures would be drawn again, with every member, by the merge.
  write_outputs(summary, records, workdir, plan.variant.name, figures=first_member is None)
  checkpoints.close()
  return summary


def _checkpoint_and_stop(loop: _Loop, watch, state, step: int, start_step: int) -> Preempted:
  """Checkpoints ``step`` after a signal (further signals are ignored) and says how to resume."""
  checkpoints = loop.checkpoints
  checkpoints.wait()  # a periodic write of this very step may be under way
  if step > start_step and checkpoints.latest_step() != step:
    state = loop.members.check_state(state)
    checkpoints.save(step, state)
    checkpoints.wait()
    loop.metrics_log.sync()
  saved = checkpoints.latest_step()
  where = (
    f"checkpoint {saved} is in {checkpoints.directory}"
    if saved is not None
    else "no step was trained and there is no checkpoint"
  )
  message = (
    f"{watch.signal_name} stopped the run at step {step} of {loop.plan.num_steps} "
    f"(epoch {loop.plan.epoch_at(step):.3g}); {where}. Rerun the same command (the same "
    "config and workdir) to resume: the resumed run ends identical to an uninterrupted one"
  )
  log.warning(message)
  return Preempted(message, watch.signal_name, step, saved)


def _members(
  spec: RunSpec, population, checkpoints, dataset, state, restored, first_member=None
) -> Members:
  """The run's members, each guard with its skip limit and what its message can name.

  The skip limit is enforced for a single run (``DivergenceGuard.check_state``);
  a population's members are checked for non-finite steps only. A group
  (``first_member`` set) trains on when all its members diverged.
  """
  plan, settings = spec.plan, spec.settings
  members = Members(
    population,
    plan,
    checkpoints,
    settings.divergence_loss_factor,
    first_member=first_member or 0,
    stop_when_all_diverged=first_member is None,
  )
  for guard in members.guards:
    if settings.nonfinite_policy == "skip":
      guard.skip_limit = SkipLimit.from_settings(settings, plan.num_steps)
      if restored is not None and population is None:
        guard.skip_limit.start(restored, int(state.skipped_steps))
    guard.resumed_from = restored
    guard.train_inputs = getattr(dataset, "x_train", None)
  return members


def _train_batches(spec: RunSpec, dataset, start_step: int, seeds):
  """The training batches from ``start_step`` on, on the plan's batch schedule.

  A population's (``seeds``) stacks each member's stream: ``[P, B, ...]``.
  """
  pipeline = data_lib.input_pipeline(spec.data, dataset, spec.plan.protocol)
  if seeds is None:
    iterator, seeding = data_lib.BatchIterator, {"seed": spec.settings.seed}
  else:
    iterator, seeding = data_lib.PopulationBatches, {"seeds": seeds}
  return iterator(
    data_lib.split_source(dataset, "train"),
    spec.plan.batch_schedule,
    **seeding,
    start_step=start_step,
    augment=pipeline.augment,
    transform=pipeline.train_transform,
    prefetch=spec.settings.prefetch_batches,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )


def _progress_bar(spec: RunSpec, start_step: int):
  from tqdm.auto import tqdm

  plan = spec.plan
  return tqdm(
    total=plan.num_steps,
    initial=start_step,
    desc=plan.variant.name,
    disable=not spec.settings.progress_bar or jax.process_index() != 0,
    dynamic_ncols=True,
  )


def _after_call(loop: _Loop, state: TrainState, metrics, step: int, length: int, end_step: int):
  """The events of the steps in one call, at its end: logging, evaluation, checkpoints.

  With steps_per_call=1 that is every step. Returns the state (a population's
  with members that diverged at a logged loss marked to be frozen).
  """
  when, plan, members = loop.spec.events, loop.plan, loop.members
  done = step + length
  finished = range(step + 1, done + 1)
  log_steps = [d for d in finished if events.logged(when, plan, d)]
  if log_steps:
    state = _log_metrics(loop, state, metrics, step, length, log_steps)
  if any(events.evaluated(when, plan, d) for d in finished):
    state = members.check_state(state)
    record = evaluation_record(loop.eval_fn, state, loop.dataset, loop.spec, loop.mesh, done)
    head = {"step": record.pop("step"), "epoch": record.pop("epoch")}
    for member, values in members.split(record):
      loop.metrics_log.write({**head, **members.fields(member), **values})
    loop.bar.set_postfix(test_acc=f"{np.mean(record['test_accuracy']):.4f}")
  last = done in (plan.num_steps, end_step)
  if any(events.checkpointed(when, plan, d) for d in finished) or last:
    state = members.check_state(state)
    loop.checkpoints.save(done, state)
    loop.metrics_log.sync()  # the log on disk reaches at least the checkpoint
  loop.bar.update(length)
  return state


def _log_metrics(loop: _Loop, state, metrics, step: int, length: int, log_steps: list[int]):
  """Brings the call's metrics to the host (the only sync between evaluations) and logs them.

  Returns the state (see ``Members.check_loss``).
  """
  plan, members = loop.plan, loop.members
  metrics = jax.device_get(metrics)
  state = members.check_state(state)
  done = step + length
  now = time.perf_counter()
  rate = (plan.offset_at(done) - plan.offset_at(loop.last_step)) / (now - loop.last_time)
  # Examples of every member.
  rate *= len(members.guards)
  loop.last_time, loop.last_step = now, done
  for d in log_steps:
    values = metrics if length == 1 else {k: v[d - step - 1] for k, v in metrics.items()}
    for member, own in members.split(values):
      state = members.check_loss(state, member, d, float(own["loss"]))
      if member in members.diverged:
        continue
      record = {"step": d, "epoch": plan.epoch_at(d), **members.fields(member), **own}
      record["batch_size"] = plan.batch_size_at(d - 1)
      record["examples_per_sec"] = rate
      loop.metrics_log.write(record)
  loop.bar.set_postfix(loss=f"{np.mean(values['loss']):.3f}", lr=lr_text(values["lr"]))
  return state


def lr_text(lrs) -> str:
  """The progress bar's rate: one value, or a grid population's lowest-highest."""
  low, high = float(np.min(lrs)), float(np.max(lrs))
  return f"{low:.3g}" if low == high else f"{low:.3g}-{high:.3g}"
