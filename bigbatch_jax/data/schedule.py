"""The batch schedule: which global batch size each step has, and where it starts in the stream.

One definition serves the run plan (learning-rate scaling, epochs, logging)
and the data iterator (which examples step s reads), so exact resumption
depends on one piece of arithmetic: step s reads stream positions
[offset(s), offset(s) + size(s)).
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

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
  """

  phases: tuple[tuple[int, int], ...]

  def __post_init__(self):
    starts = [start for start, _ in self.phases]
    # Equal starts are phases of no step (a batch that grows past two drops at once).
    if not self.phases or starts[0] != 0 or starts != sorted(starts):
      raise ValueError(f"phases must start at step 0 in step order, got {self.phases}")

  def __call__(self, step: int) -> int:
    """The global batch size of update ``step``."""
    starts = [start for start, _ in self.phases]
    return self.phases[bisect.bisect_right(starts, step) - 1][1]

  @property
  def sizes(self) -> tuple[int, ...]:
    """The distinct batch sizes, ascending."""
    return tuple(sorted({size for _, size in self.phases}))

  def offset_at(self, step: int) -> int:
    """Stream position of the first example of update ``step``."""
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
