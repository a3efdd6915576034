"""The training example stream and its batches: a pure function of (seed, offset).

The training loop measures durations in examples, so the data are defined as
one infinite *stream* of example indices: the concatenation of per-epoch
permutations of range(N), epoch e's permutation derived from (seed, e) only.
Batches take consecutive stream positions and may cross epoch boundaries (no
remainder is dropped), so `epochs * N / batch_size` steps see exactly `epochs`
epochs, and a regime adapted to a larger batch takes exactly the planned
number of updates. A `BatchSchedule` with `epoch_size` instead keeps each
epoch's last partial batch (the bigBatch reference's DataLoader):
the batch sizes and offsets come from the schedule either way. Resuming
needs only the (step, offset) of the next batch: everything else,
augmentation included, is recomputed from the seed.

Why not grain's `MapDataset.range(N).shuffle(seed)`: it seeds epoch e with
`seed + e`, so run seed=1 replays run seed=0 shifted by one epoch, and it
shuffles index by index in Python (~12 us per index, 0.2 s per 16384-example
batch). A numpy permutation per epoch, cached, costs one vectorised shuffle
per epoch and a slice per batch. Per-batch gathering is a numpy take for
in-memory data and a thread pool for decoding sources; growing batch sizes
and process sharding are easier to state here than as grain transforms.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from bigbatch_jax.data.arrays import SEED_TAG_AUGMENT, ArrayDataset
from bigbatch_jax.data.gather import (
  RandomAccessSource,
  Transform,
  check_data,
  load_examples,
)
from bigbatch_jax.data.schedule import (
  BatchSize,
  batch_size_at,
  check_int,
  offset_at_step,
  step_at_offset,
)
from bigbatch_jax.data.stream import StreamOrder, check_process

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]
"""Batch augmentation: (float32 batch of inputs, rng) -> augmented batch of the same length."""


class _BatchPlan:
  """Everything that defines the batches; shared by the iterator and its thread."""

  def __init__(self, data, batch_size, seed, augment, transform, process_index, process_count):
    self.data = data
    self.num_examples = data.num_train if isinstance(data, ArrayDataset) else len(data)
    self.batch_size = batch_size
    self.seed = seed
    self.order = StreamOrder(seed, self.num_examples)
    self.augment = augment
    self.transform = transform
    self.process_index = process_index
    self.process_count = process_count

  def make_batch(
    self, step: int, offset: int, executor: concurrent.futures.Executor | None
  ) -> tuple[dict[str, np.ndarray], int]:
    size = batch_size_at(self.batch_size, step)
    if size % self.process_count:
      raise ValueError(
        f"batch size {size} at step {step} is not divisible by process_count={self.process_count}"
      )
    local = size // self.process_count
    lo = offset + self.process_index * local
    indices = self.order.indices(lo, local)
    positions = np.arange(lo, lo + local)
    x, y = load_examples(
      self.data, "train", indices, positions, self.seed, self.transform, executor
    )
    if self.augment is not None:
      # Keyed by this shard's first stream position: unique per batch and
      # per process, and recomputed exactly on resume.
      x = self.augment(x, np.random.default_rng([SEED_TAG_AUGMENT, self.seed, lo]))
      if not isinstance(x, np.ndarray) or x.shape[:1] != (local,):
        raise ValueError(
          f"augment must return an array with {local} examples, got "
          f"{getattr(x, 'shape', type(x).__name__)}"
        )
    return {"x": x, "y": y}, offset + size


class _Failure:
  def __init__(self, error: BaseException):
    self.error = error


def _produce(plan, step, offset, executor, out: queue.Queue, stop: threading.Event) -> None:
  """Producer thread: builds batches in order until stopped."""
  item: Any
  while not stop.is_set():
    try:
      batch, next_offset = plan.make_batch(step, offset, executor)
      item = (step, offset, next_offset, batch)
    except BaseException as e:  # handed to the consumer, which re-raises it
      item = _Failure(e)
    while not stop.is_set():
      try:
        out.put(item, timeout=0.05)
        break
      except queue.Full:
        continue
    if isinstance(item, _Failure):
      return
    step, offset = step + 1, next_offset


def _shutdown(stop: threading.Event, thread, executor, wait: bool) -> None:
  stop.set()
  if executor is not None:
    executor.shutdown(wait=False, cancel_futures=True)
  if wait and thread is not None and thread is not threading.current_thread():
    thread.join()


class BatchIterator:
  """Training batches `{"x": float32, "y": int32}` read from the seeded example stream.

  Step s holds stream positions [offset_s, offset_s + B_s), with
  offset_s = B_0 + ... + B_{s-1}; see `stream_indices`. The iterator is
  infinite; the caller decides when to stop. Resuming from a checkpoint's
  (step, offset) yields exactly the batches the uninterrupted run would have.

  In-memory data (ArrayDataset) is gathered with one numpy take and
  normalised per batch (uint8 images become float32). Random-access sources
  (TfdsStreamSource) are read in chunks on a thread pool (`__getitems__`
  where the source has it) and must
  be given a `transform` that decodes each example to a fixed shape.

  Randomness: `augment` gets a generator keyed by (seed, first stream
  position of this process's slice); `transform` gets one keyed by
  (seed, the example's stream position). Both are independent of batching
  history, so resume reproduces them.

  Multi-host: with process_count P, each process loads only its contiguous
  slice [p * B / P, (p + 1) * B / P) of every global batch (the slice
  `shard_for_process` would cut). Augmentation keys differ per slice, so
  augmented values depend on P; indices and labels do not.

  Args:
    data: an ArrayDataset (its train split) or a random-access source.
    batch_size: global batch size, or a function step -> global batch size.
    seed: stream seed (required: no default seed).
    start_step: step of the first batch to yield.
    start: stream position of the first batch to yield. With only one of
      start / start_step the other follows from the batch-size schedule;
      with both they must agree.
    augment: optional batch augmentation `(x, rng) -> x` applied to the
      float32 batch (e.g. `cifar_augment`).
    transform: optional per-example `(x, rng) -> x` (e.g.
      `imagenet_train_transform`); for ArrayDataset it runs after
      normalisation, for sources on the decoded example.
    process_index: this process in [0, process_count).
    process_count: number of processes; must divide every batch size.
    prefetch: batches built ahead on a background thread; 0 builds them in
      `__next__` on the calling thread.
    num_threads: threads reading a random-access source (default: the
      ThreadPoolExecutor default); unused for ArrayDataset without transform.

  Attributes:
    step: step of the next batch `next()` returns.
    offset: stream position of the next batch `next()` returns.
  """

  def __init__(
    self,
    data: ArrayDataset | RandomAccessSource,
    batch_size: BatchSize,
    *,
    seed: int,
    start_step: int | None = None,
    start: int | None = None,
    augment: Augment | None = None,
    transform: Transform | None = None,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 2,
    num_threads: int | None = None,
  ):
    check_data(data)
    seed = check_int("seed", seed, 0)
    process_index, process_count = check_process(process_index, process_count)
    prefetch = check_int("prefetch", prefetch, 0)
    if num_threads is not None:
      num_threads = check_int("num_threads", num_threads, 1)
    if not (callable(batch_size) or isinstance(batch_size, int | np.integer)) or isinstance(
      batch_size, bool
    ):
      raise ValueError(
        f"batch_size must be a positive int or a function step -> int, got {batch_size!r}"
      )
    for name, fn in (("augment", augment), ("transform", transform)):
      if fn is not None and not callable(fn):
        raise ValueError(f"{name} must be callable (x, rng) -> x or None, got {fn!r}")
    if start_step is not None:
      start_step = check_int("start_step", start_step, 0)
    if start is not None:
      start = check_int("start", start, 0)
    if start is None:
      start_step = start_step or 0
      start = offset_at_step(batch_size, start_step)
    elif start_step is None:
      start_step = step_at_offset(batch_size, start)
    elif offset_at_step(batch_size, start_step) != start:
      raise ValueError(
        f"start={start} does not match start_step={start_step}: the batch-size "
        f"schedule puts step {start_step} at {offset_at_step(batch_size, start_step)}"
      )
    batch_size_at(batch_size, start_step)  # fail now on a bad (first) batch size

    self.step = start_step
    self.offset = start
    self._plan = self._batch_plan(
      data, batch_size, seed, augment, transform, process_index, process_count
    )
    needs_threads = not isinstance(data, ArrayDataset)
    self._executor = (
      concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="bigbatch-read")
      if needs_threads
      else None
    )
    self._stop = threading.Event()
    self._closed = False
    self._queue: queue.Queue | None = None
    self._thread: threading.Thread | None = None
    if prefetch:
      self._queue = queue.Queue(maxsize=prefetch)
      self._thread = threading.Thread(
        target=_produce,
        args=(self._plan, start_step, start, self._executor, self._queue, self._stop),
        name="bigbatch-prefetch",
        daemon=True,
      )
      self._thread.start()
    # Stops the thread and the pool when the iterator is garbage collected
    # or at interpreter exit, whichever comes first; the thread holds no
    # reference to `self`, so collection is possible.
    self._finalizer = weakref.finalize(
      self, _shutdown, self._stop, self._thread, self._executor, False
    )

  def _batch_plan(self, data, batch_size, seed, *options):
    """What builds each batch (the producer thread calls its ``make_batch``)."""
    return _BatchPlan(data, batch_size, seed, *options)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._closed:
      raise StopIteration
    if self._queue is None:
      batch, next_offset = self._plan.make_batch(self.step, self.offset, self._executor)
    else:
      item = self._queue.get()
      if isinstance(item, _Failure):
        self.close()
        raise item.error
      step, offset, next_offset, batch = item
      assert (step, offset) == (self.step, self.offset), "producer out of sync"
    self.step += 1
    self.offset = next_offset
    return batch

  def close(self) -> None:
    """Stops the prefetch thread and the reader pool and waits for the thread."""
    if self._closed:
      return
    self._closed = True
    self._finalizer.detach()
    _shutdown(self._stop, self._thread, self._executor, wait=True)

  @property
  def threads_alive(self) -> bool:
    """Whether the prefetch thread is still running."""
    return self._thread is not None and self._thread.is_alive()

  def __enter__(self) -> BatchIterator:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def eval_batches(
  data: ArrayDataset | RandomAccessSource,
  batch_size: int,
  *,
  split: str = "test",
  transform: Transform | None = None,
  process_index: int = 0,
  process_count: int = 1,
  num_threads: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """One ordered pass over a split, padded to full batches for a static jit shape.

  Yields `{"x", "y", "mask"}`; the last batch is padded with zeros and
  `mask` is False on the padding, so metrics average over `mask`.

  Args:
    data: an ArrayDataset (the split named by `split`) or a random-access
      source (all of it, e.g. TfdsStreamSource(..., split="validation")).
    batch_size: global batch size; must be divisible by process_count.
    split: "test" or "train", for an ArrayDataset.
    transform: per-example `(x, rng) -> x`, e.g. `imagenet_eval_transform`.
    process_index: this process in [0, process_count).
    process_count: number of processes; each yields its slice of each batch.
    num_threads: threads reading a random-access source.

  Yields:
    Batch dicts with `batch_size // process_count` rows.
  """
  check_data(data)
  batch_size = check_int("batch_size", batch_size, 1)
  process_index, process_count = check_process(process_index, process_count)
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} is not divisible by process_count={process_count}")
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  if isinstance(data, ArrayDataset):
    n = data.num_train if split == "train" else data.num_test
  else:
    n = len(data)
  local = batch_size // process_count
  executor = (
    None
    if isinstance(data, ArrayDataset)
    else concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="bigbatch-eval")
  )
  try:
    for batch_start in range(0, n, batch_size):
      lo = batch_start + process_index * local
      positions = np.arange(lo, min(lo + local, n))
      x, y = load_examples(data, split, positions, positions, 0, transform, executor)
      mask = np.zeros(local, bool)
      mask[: len(positions)] = True
      if len(positions) < local:
        pad = local - len(positions)
        if len(positions) == 0:
          # Whole slice is padding: take the example shape from item 0.
          x0, _ = load_examples(
            data,
            split,
            np.zeros(1, np.int64),
            np.zeros(1, np.int64),
            0,
            transform,
            executor,
          )
          x = np.zeros((0, *x0.shape[1:]), np.float32)
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), np.float32)])
        y = np.concatenate([y, np.zeros(pad, np.int32)])
      yield {"x": x, "y": y, "mask": mask}
  finally:
    if executor is not None:
      executor.shutdown(wait=False, cancel_futures=True)


class _PopulationPlan:
  """A population's batch: each distinct seed's ``_BatchPlan`` batch, stacked in member order."""

  def __init__(self, plans: list[_BatchPlan], stream_of: list[int]):
    self.plans = plans
    self.stream_of = stream_of

  def make_batch(
    self, step: int, offset: int, executor: concurrent.futures.Executor | None
  ) -> tuple[dict[str, np.ndarray], int]:
    made = [plan.make_batch(step, offset, executor) for plan in self.plans]
    batches = [made[i][0] for i in self.stream_of]
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}, made[0][1]


class PopulationBatches(BatchIterator):
  """The batches of a population: one seeded stream per member, stacked ``[P, B, ...]``.

  Member i reads the example stream (and augmentation) of ``seeds[i]``,
  exactly the batches a single run of that seed reads; each distinct seed's
  stream is read once per step for the members that share it (a grid's
  members share seeds). One prefetch thread builds the stacked batches: a
  thread per stream, each handing over its batches, cost a ten-member
  population more host time per step than building them.

  Args:
    data: as for ``BatchIterator``.
    batch_size: as for ``BatchIterator`` (every member shares the schedule).
    seeds: the members' stream seeds, in member order.
    **options: the other ``BatchIterator`` arguments (start_step, augment, ...).
  """

  def __init__(self, data, batch_size: BatchSize, *, seeds, **options):
    if not seeds:
      raise ValueError(f"seeds must name at least one member, got {seeds!r}")
    self.seeds = tuple(check_int("seed", seed, 0) for seed in seeds)
    # The seed argument is only checked there; the plan reads every member's (_batch_plan).
    super().__init__(data, batch_size, seed=self.seeds[0], **options)

  def _batch_plan(self, data, batch_size, seed, *options):
    distinct = list(dict.fromkeys(self.seeds))
    plans = [_BatchPlan(data, batch_size, s, *options) for s in distinct]
    return _PopulationPlan(plans, [distinct.index(s) for s in self.seeds])
