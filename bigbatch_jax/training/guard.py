"""Stopping a diverged run with a message that says what diverged and what to try."""

from __future__ import annotations

import numpy as np

from bigbatch_jax.training.checkpoint import Checkpointer
from bigbatch_jax.training.plan import RunPlan, lr_schedule
from bigbatch_jax.training.state import TrainState

NONFINITE_KINDS = {1: "loss", 2: "gradient", 3: "loss and gradient"}


class DivergenceGuard:
  """Raises ``FloatingPointError`` when a run diverges.

  Two signs: a non-finite loss or gradient that the step recorded in the
  state (the "stop" policy), and a logged loss over ``loss_factor`` times the
  first logged loss (None: off).
  """

  def __init__(self, plan: RunPlan, checkpoints: Checkpointer, loss_factor: float | None):
    self.plan = plan
    self.checkpoints = checkpoints
    self.loss_factor = loss_factor
    self.first_loss: float | None = None

  def check_state(self, state: TrainState) -> None:
    """Raises if the step recorded a non-finite loss or gradient (one host sync)."""
    bad_step = int(state.nonfinite_step)
    if bad_step >= 0:
      what = NONFINITE_KINDS[int(state.nonfinite_kind)]
      raise self.error(bad_step, f"non-finite {what}")

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
    return FloatingPointError(
      f"training diverged: {what} at step {step}, learning rate {lr:.4g} "
      f"(base {plan.regime.lr:g} x {plan.lr_scale:.4g} for the {plan.lr_rule!r} rule at "
      f"batch {plan.batch_size}). Lower the learning rate, clip the gradients (variant part "
      "'clip' or --config.grad_clip_norm), or skip non-finite updates with "
      f"--config.nonfinite_policy=skip. {kept}"
    )
