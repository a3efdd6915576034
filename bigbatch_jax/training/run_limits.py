"""The limits a run is held to beyond its plan: skipped updates, and the divergence keys' values.

``nonfinite_policy="skip"`` drops an update whose loss or gradient is not
finite. A few such updates are noise; many mean the run is diverging while
it seems to train (a run that skips every update ends at chance accuracy).
:class:`SkipLimit` stops it once the skips pass a fraction of the planned
updates or a run of consecutive skips.
"""

from __future__ import annotations

import numbers


def _check_number(name: str, value, low: float, low_open: bool, allow_none: bool, what: str):
  if value is None and allow_none:
    return
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
  ok = ok and (value > low if low_open else value >= low)
  if not ok:
    bound = f"> {low:g}" if low_open else f">= {low:g}"
    none = " or None (off)" if allow_none else ""
    raise ValueError(f"config.{name}={value!r}; valid: a number {bound}{none} ({what})")


def check_limit_keys(
  divergence_loss_factor, nonfinite_max_skip_fraction, nonfinite_max_consecutive_skips
) -> None:
  """Checks the divergence and skip-limit keys' values (``spec.resolve``, before any compute)."""
  _check_number(
    "divergence_loss_factor",
    divergence_loss_factor,
    1.0,
    True,
    True,
    "stop when the logged loss is over this many times the first one",
  )
  fraction = nonfinite_max_skip_fraction
  _check_number(
    "nonfinite_max_skip_fraction", fraction, 0.0, False, False, "of the planned updates"
  )
  if fraction > 1:
    raise ValueError(
      f"config.nonfinite_max_skip_fraction={fraction!r}; valid: a fraction in [0, 1]"
    )
  consecutive = nonfinite_max_consecutive_skips
  if not isinstance(consecutive, int) or isinstance(consecutive, bool) or consecutive < 1:
    raise ValueError(
      f"config.nonfinite_max_consecutive_skips={consecutive!r}; valid: an integer >= 1"
    )


class SkipLimit:
  """Tracks skipped updates between the host's checks and says when they pass the limit.

  The step records a running count of skips in the state; the host reads it
  at each check (every logged step, evaluation and checkpoint). A run of
  consecutive skips is seen whole when every update between two checks was
  skipped, so with ``log_every_steps=1`` it is exact and otherwise a lower
  bound (a run that starts or ends between checks is counted from the next).
  """

  def __init__(self, num_steps: int, max_fraction: float, max_consecutive: int):
    self.num_steps = num_steps
    self.max_fraction = max_fraction
    self.max_consecutive = max_consecutive
    self._step = 0  # at the last check (a resumed run: see ``start``)
    self._skipped = 0
    self.consecutive = 0

  @classmethod
  def from_settings(cls, settings, num_steps: int) -> SkipLimit:
    """The limit of a run's :class:`~bigbatch_jax.training.spec.RunSettings`."""
    return cls(
      num_steps, settings.nonfinite_max_skip_fraction, settings.nonfinite_max_consecutive_skips
    )

  def start(self, step: int, skipped: int) -> None:
    """Sets the count a resumed run starts from."""
    self._step, self._skipped, self.consecutive = step, skipped, 0

  def update(self, step: int, skipped: int) -> str | None:
    """Takes the state's ``step`` and ``skipped`` count; returns why to stop, or None."""
    if step > self._step:
      new = skipped - self._skipped
      self.consecutive = self.consecutive + new if new == step - self._step else 0
    self._step, self._skipped = step, skipped
    allowed = self.max_fraction * self.num_steps
    if skipped > allowed:
      return (
        f"{skipped} of {step} updates were skipped for a non-finite loss or gradient, over "
        f"the limit of {self.max_fraction:g} of the {self.num_steps} planned "
        "(config.nonfinite_max_skip_fraction)"
      )
    if self.consecutive >= self.max_consecutive:
      return (
        f"{self.consecutive} consecutive updates up to step {step} were skipped for a "
        f"non-finite loss or gradient (limit: config.nonfinite_max_consecutive_skips="
        f"{self.max_consecutive})"
      )
    return None
