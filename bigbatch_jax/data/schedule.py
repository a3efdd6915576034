"""The batch schedule: which global batch size each step has, and where it starts in the stream.

One definition serves the run plan (learning-rate scaling, epochs, logging)
and the data iterator (which examples step s reads), so exact resumption
depends on one piece of arithmetic: step s reads stream positions
[offset(s), offset(s) + size(s)).

Two ways to cut the stream into batches: by default batches may cross epoch
boundaries (no remainder is dropped, so E epochs at batch B are E * N / B
updates); with ``epoch_size`` (the bigBatch reference's PyTorch DataLoader,
``drop_last=False``) every epoch is its own ceil(N / B) updates,
the last of N mod B examples, and reads its permutation exactly once.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from bigbatch_jax import regimes

BatchSize = int | Callable[[int], int]
"""A fixed batch size, or a function from step to batch size (growing batches)."""


def check_int(name: str, value: Any, minimum: int) -> int:
  """``value`` as an int, or a ValueError naming it when it is not an int >= ``minimum``."""
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
  return int(value)


@dataclasses.dataclass(frozen=True)
class BatchSchedule:
  """Piecewise-constant global batch sizes: ``phases`` of (first step, batch size).

  Callable as a :data:`BatchSize` (step -> size); offsets are computed in
  closed form from the phases (Smith et al.'s growing batches have a few).

  With ``epoch_size`` N (one phase of batch B <= N), each epoch keeps its last
  partial batch, as the bigBatch reference code's PyTorch DataLoader
  (``drop_last=False``) does: an epoch is S = ceil(N / B) updates,
  the first S - 1 of B examples and the last of N - (S - 1) B, so update s
  reads stream positions [(s // S) N + (s % S) B, ... + size(s)): epoch
  s // S's permutation, every example once. A growing batch with a kept
  partial batch is refused (not built).
  """

  phases: tuple[tuple[int, int], ...]
  epoch_size: int | None = None

  def __post_init__(self):
    starts = [start for start, _ in self.phases]
    # Equal starts are phases of no step (a batch that grows past two drops at once).
    if not self.phases or starts[0] != 0 or starts != sorted(starts):
      raise ValueError(f"phases must start at step 0 in step order, got {self.phases}")
    if self.epoch_size is None:
      return
    size = check_int("epoch_size", self.epoch_size, 1)
    if len(self.phases) != 1:
      raise ValueError(
        f"a kept partial last batch (epoch_size={size}) needs one batch size; the schedule "
        f"grows the batch in phases {self.phases} (a growing batch with partial batches "
        "is not supported)"
      )
    if self.phases[0][1] > size:
      raise ValueError(
        f"batch size {self.phases[0][1]} is larger than the epoch of {size} examples: "
        "every update would be the partial batch"
      )

  @property
  def _updates_per_epoch(self) -> int:
    """ceil(N / B): the updates of one epoch when its partial batch is kept."""
    return math.ceil(self.epoch_size / self.phases[0][1])

  @property
  def partial_size(self) -> int:
    """The size of each epoch's last, partial batch: N mod B; 0 when there is none."""
    return 0 if self.epoch_size is None else self.epoch_size % self.phases[0][1]

  def steps_per_epoch(self, num_examples: int) -> float:
    """Updates per epoch: N / B of the first phase (batches cross epochs), or ceil(N / B)."""
    if self.epoch_size is None:
      return num_examples / self.phases[0][1]
    self._check_epoch_size(num_examples)
    return self._updates_per_epoch

  def num_steps(self, epochs: float, num_examples: int) -> int:
    """The updates of ``epochs`` epochs (rounded once): E N / B, or E ceil(N / B)."""
    if self.epoch_size is None:
      return regimes.epochs_to_steps(epochs, num_examples, self.phases[0][1])
    if epochs < 0:
      raise ValueError(f"epochs must be >= 0, got {epochs}")
    return int(round(epochs * self.steps_per_epoch(num_examples)))

  def epoch_first_steps(self, num_examples: int, num_steps: int) -> tuple[int, ...]:
    """The first update of every epoch below ``num_steps`` (the momentum restarts there)."""
    if self.epoch_size is None:
      return regimes.epoch_first_steps(num_examples, self.phases, num_steps)
    return tuple(range(0, max(num_steps, 1), int(self.steps_per_epoch(num_examples))))

  def _check_epoch_size(self, num_examples: int) -> None:
    if num_examples != self.epoch_size:
      raise ValueError(
        f"the schedule keeps partial batches of an epoch of {self.epoch_size} examples, "
        f"asked about {num_examples}"
      )

  def __call__(self, step: int) -> int:
    """The global batch size of update ``step``."""
    if self.epoch_size is not None:
      per_epoch = self._updates_per_epoch
      last = self.partial_size and step % per_epoch == per_epoch - 1
      return self.partial_size if last else self.phases[0][1]
    starts = [start for start, _ in self.phases]
    return self.phases[bisect.bisect_right(starts, step) - 1][1]

  @property
  def sizes(self) -> tuple[int, ...]:
    """The distinct batch sizes, ascending."""
    sizes = {size for _, size in self.phases} | ({self.partial_size} - {0})
    return tuple(sorted(sizes))

  def next_change(self, step: int) -> int | None:
    """The first update after ``step`` whose batch size may differ (None: none follows)."""
    if self.partial_size:
      per_epoch = self._updates_per_epoch
      in_epoch = step % per_epoch
      return step + 1 if in_epoch == per_epoch - 1 else step - in_epoch + per_epoch - 1
    return next((start for start, _ in self.phases if start > step), None)

  def offset_at(self, step: int) -> int:
    """Stream position of the first example of update ``step``."""
    if self.epoch_size is not None:
      epoch, in_epoch = divmod(step, self._updates_per_epoch)
      return epoch * self.epoch_size + in_epoch * self.phases[0][1]
    offset = 0
    ends = [start for start, _ in self.phases[1:]] + [step]
    for (start, size), end in zip(self.phases, ends, strict=True):
      offset += (min(end, step) - start) * size
      if end >= step:
        break
    return offset


def batch_size_at(batch_size: BatchSize, step: int) -> int:
  """The (validated) global batch size of `step`."""
  value = batch_size(step) if callable(batch_size) else batch_size
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
    raise ValueError(f"batch size at step {step} must be a positive int, got {value!r}")
  return int(value)


def offset_at_step(batch_size: BatchSize, step: int) -> int:
  """Stream position of the first example of `step`: the sum of earlier batch sizes."""
  step = check_int("step", step, 0)
  if not callable(batch_size):
    return batch_size_at(batch_size, 0) * step
  if isinstance(batch_size, BatchSchedule):
    return batch_size.offset_at(step)
  return sum(batch_size_at(batch_size, s) for s in range(step))


def step_at_offset(batch_size: BatchSize, offset: int) -> int:
  if not callable(batch_size):
    size = batch_size_at(batch_size, 0)
    if offset % size:
      raise ValueError(
        f"start={offset} is not a batch boundary of batch size {size}; "
        f"use a multiple of {size} or pass start_step"
      )
    return offset // size
  step, position = 0, 0
  while position < offset:
    position += batch_size_at(batch_size, step)
    step += 1
  if position != offset:
    raise ValueError(
      f"start={offset} falls inside batch {step - 1} of the batch-size schedule "
      f"(that batch ends at {position}); pass start_step, or a batch boundary"
    )
  return step
