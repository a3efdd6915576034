"""Stopping a diverged run with a message that says what diverged and what to try."""

from __future__ import annotations

import numpy as np

from bigbatch_jax.training.checkpoint import Checkpointer
from bigbatch_jax.training.plan import RunPlan, lr_schedule
from bigbatch_jax.training.run_limits import SkipLimit
from bigbatch_jax.training.state import TrainState

NONFINITE_KINDS = {1: "loss", 2: "gradient", 3: "loss and gradient"}


class DivergenceGuard:
  """Raises ``FloatingPointError`` when a run diverges.

  Two signs: a non-finite loss or gradient that the step recorded in the
  state (the "stop" policy), and a logged loss over ``loss_factor`` times the
  first logged loss (None: off).
  """

  def __init__(
    self,
    plan: RunPlan,
    checkpoints: Checkpointer,
    loss_factor: float | None,
    skip_limit: SkipLimit | None = None,
  ):
    self.plan = plan
    self.checkpoints = checkpoints
    self.loss_factor = loss_factor
    self.skip_limit = skip_limit
    self.first_loss: float | None = None
    # Set by the loop: what the error names besides the learning rate.
    self.resumed_from: int | None = None
    self.train_inputs = None  # an array, or None (a streamed dataset)

  def check_state(self, state: TrainState) -> None:
    """Raises if the step recorded a non-finite loss or gradient (one host sync)."""
    bad_step = int(state.nonfinite_step)
    if bad_step >= 0:
      what = NONFINITE_KINDS[int(state.nonfinite_kind)]
      raise self.error(bad_step, f"non-finite {what}")
    if self.skip_limit is not None:
      step = int(state.step)
      reason = self.skip_limit.update(step, int(state.skipped_steps))
      if reason is not None:
        raise self.error(step, reason)

  def check_loss(self, step: int, loss: float) -> None:
    """Raises if the logged ``loss`` at ``step`` is over the factor times the first one."""
    if self.first_loss is None:
      self.first_loss = loss
    factor = self.loss_factor
    if factor is not None and np.isfinite(loss) and loss > factor * self.first_loss:
      raise self.error(
        step, f"loss {loss:.4g} is over {factor:g} times the first logged {self.first_loss:.4g}"
      )

  def error(self, step: int, what: str) -> FloatingPointError:
    plan = self.plan
    lr = float(lr_schedule(plan)(step))
    last = self.checkpoints.latest_step()
    kept = (
      f"The last good checkpoint (step {last}) is kept in {self.checkpoints.directory}."
      if last is not None
      else "No checkpoint had been written yet."
    )
    inputs = self.train_inputs
    scale = float(np.max(np.abs(inputs))) if inputs is not None and inputs.size else None
    cause = divergence_cause(scale, self.resumed_from, self.first_loss)
    advice = (
      "Lower the learning rate, clip the gradients (variant part 'clip' or "
      "--config.grad_clip_norm), or skip non-finite updates with --config.nonfinite_policy=skip"
      if self.skip_limit is None
      else "Lower the learning rate or clip the gradients (variant part 'clip' or "
      "--config.grad_clip_norm)"
    )
    return FloatingPointError(
      f"training diverged: {what} at step {step}, learning rate {lr:.4g} "
      f"(base {plan.regime.lr:g} x {plan.lr_scale:.4g} for the {plan.lr_rule!r} rule at "
      f"batch {plan.batch_size}). {cause or advice}. {kept}"
    )


# Inputs larger than this (in absolute value) are named as the likely cause.
HUGE_INPUT = 1e4


def divergence_cause(
  input_scale: float | None, resumed_from: int | None, first_loss: float | None
) -> str | None:
  """A likelier cause of a divergence than the learning rate, when one is seen; else None."""
  if input_scale is not None and not np.isfinite(input_scale):
    return "The training inputs hold NaN or infinite values: clean the data"
  if input_scale is not None and input_scale > HUGE_INPUT:
    return (
      f"The training inputs reach |x| = {input_scale:.3g}: normalize them (the learning rate "
      "is not the cause at that scale)"
    )
  if resumed_from is not None and resumed_from > 0 and first_loss is None:
    return (
      f"The run diverged before its first logged loss after resuming from checkpoint "
      f"{resumed_from}: that checkpoint passed its checksums, so its state was already near "
      "divergence when saved; move it out of the checkpoints directory to resume from the "
      "one before"
    )
  return None
