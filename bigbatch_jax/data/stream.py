"""The seeded example stream: per-epoch permutations, and each process's slice of a batch."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from bigbatch_jax.data.arrays import SEED_TAG_PERMUTATION
from bigbatch_jax.data.schedule import check_int


def epoch_permutation(seed: int, num_examples: int, epoch: int) -> np.ndarray:
  """The read-only permutation of range(num_examples) that orders ``epoch`` of ``seed``'s stream."""
  rng = np.random.default_rng([SEED_TAG_PERMUTATION, seed, epoch])
  perm = rng.permutation(num_examples)
  perm.flags.writeable = False
  return perm


class StreamOrder:
  """One seed's example stream over ``num_examples`` examples, its recent epochs cached.

  A batch touches at most two epochs; caching the last two permutations per
  stream makes consecutive batches slices of arrays already built. The cache is the
  stream's own: the streams of a population (one per member seed) read in
  turn would evict each other from a shared one and rebuild a permutation for
  every batch.
  """

  def __init__(self, seed: int, num_examples: int):
    self.seed = check_int("seed", seed, 0)
    self.num_examples = check_int("num_examples", num_examples, 1)
    self._permutation = functools.lru_cache(maxsize=2)(
      functools.partial(epoch_permutation, self.seed, self.num_examples)
    )

  def indices(self, start: int, count: int) -> np.ndarray:
    """Example indices at stream positions [start, start + count) (see :func:`stream_indices`)."""
    start = check_int("start", start, 0)
    count = check_int("count", count, 0)
    out = np.empty(count, np.int64)
    filled = 0
    while filled < count:
      epoch, offset = divmod(start + filled, self.num_examples)
      take = min(count - filled, self.num_examples - offset)
      out[filled : filled + take] = self._permutation(epoch)[offset : offset + take]
      filled += take
    return out


@functools.lru_cache(maxsize=4)
def _shared_order(seed: int, num_examples: int) -> StreamOrder:
  return StreamOrder(seed, num_examples)


def stream_indices(seed: int, num_examples: int, start: int, count: int) -> np.ndarray:
  """Example indices at stream positions [start, start + count).

  Position p lies in epoch p // num_examples, whose permutation of
  range(num_examples) is drawn from (seed, epoch) alone, so any window of
  the stream is computed without the ones before it. An iterator reading one
  stream batch after batch holds its own :class:`StreamOrder` instead.

  Args:
    seed: non-negative int.
    num_examples: size N of the dataset.
    start: first stream position (examples since the start of training).
    count: number of positions.

  Returns:
    int64 array of shape (count,) with values in [0, num_examples).
  """
  seed = check_int("seed", seed, 0)
  num_examples = check_int("num_examples", num_examples, 1)
  return _shared_order(seed, num_examples).indices(start, count)


def check_process(process_index: int, process_count: int) -> tuple[int, int]:
  """(process_index, process_count) as ints, or a ValueError naming the bad value."""
  process_count = check_int("process_count", process_count, 1)
  process_index = check_int("process_index", process_index, 0)
  if process_index >= process_count:
    raise ValueError(
      f"process_index={process_index} must be in [0, {process_count}) "
      f"for process_count={process_count}"
    )
  return process_index, process_count


def shard_for_process(
  batch: Mapping[str, np.ndarray], process_index: int, process_count: int
) -> dict[str, np.ndarray]:
  """The contiguous slice of a global batch that process `process_index` loads.

  Process p of P holds examples [p * B / P, (p + 1) * B / P) of every array.

  Args:
    batch: dict of arrays sharing the leading (batch) dimension B.
    process_index: this process, in [0, process_count).
    process_count: number of processes; must divide B.

  Returns:
    Dict of the same keys holding this process's slices.
  """
  process_index, process_count = check_process(process_index, process_count)
  sizes = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in batch.items()}
  if not sizes or len(set(sizes.values())) != 1 or None in sizes.values():
    raise ValueError(f"batch arrays must share a leading batch dimension; got sizes {sizes}")
  size = next(iter(sizes.values()))
  if size % process_count:
    raise ValueError(
      f"batch size {size} is not divisible by process_count={process_count}; "
      f"use a global batch size that is a multiple of {process_count}"
    )
  local = size // process_count
  lo = process_index * local
  return {k: v[lo : lo + local] for k, v in batch.items()}
