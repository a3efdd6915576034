"""Which updates end with an event (a log, an evaluation, a checkpoint) and where calls end.

The loop runs ``steps_per_call`` updates per compiled call; a call ends early
at the first update with an event, so every log, evaluation and checkpoint
sees the state of its own step whatever ``steps_per_call`` is. ``when`` is the
run's :class:`~bigbatch_jax.training.spec.EventSpec`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bigbatch_jax.training.run_plan import RunPlan

if TYPE_CHECKING:
  from bigbatch_jax.training.spec import EventSpec


def end_step_of(when: EventSpec, plan: RunPlan) -> int:
  """The step this call of the run ends at: the plan's last, or when.stop_after_steps."""
  if when.stop_after_steps is None:
    return plan.num_steps
  return min(plan.num_steps, when.stop_after_steps)


def call_length(step: int, end_step: int, when: EventSpec, plan: RunPlan) -> int:
  """Steps of the call from ``step``: ``when.steps_per_call``, less at the end, at a
  batch-size change or at the first step with an event (``event_after``).

  Ending a call at an event gives the log, evaluation and checkpoint of that
  step the state of that step, whatever ``steps_per_call`` is; a scanned call
  computes what as many calls of one step compute, so the run's records and
  checkpoints do not depend on ``steps_per_call`` (only its speed does).
  """
  length = min(when.steps_per_call, end_step - step)
  change = plan.batch_schedule.next_change(step)
  if change is not None and step < change < step + length:
    length = change - step
  for done in range(step + 1, step + length):
    if event_after(when, plan, done):
      return done - step
  return length


def logged(when: EventSpec, plan: RunPlan, done: int) -> bool:
  return done % when.log_every_steps == 0 or done == plan.num_steps


def evaluated(when: EventSpec, plan: RunPlan, done: int) -> bool:
  period = when.eval_every_epochs
  crossed = int(plan.epoch_at(done) / period) > int(plan.epoch_at(done - 1) / period)
  return crossed or done == plan.num_steps


def checkpointed(when: EventSpec, plan: RunPlan, done: int) -> bool:
  return done % (when.checkpoint_every_steps or plan.num_steps) == 0


def event_after(when: EventSpec, plan: RunPlan, done: int) -> bool:
  """Whether update ``done`` (counted from 1) ends with a log, an evaluation or a checkpoint."""
  return any(f(when, plan, done) for f in (logged, evaluated, checkpointed))
