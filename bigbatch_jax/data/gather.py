"""Reading examples by index from an in-memory dataset or a random-access source."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from bigbatch_jax.data.arrays import SEED_TAG_TRANSFORM, ArrayDataset

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]
"""Per-example transform: (one input, rng) -> one float32 input of a fixed shape."""


class RandomAccessSource(Protocol):
  """What a streaming source provides: `len(source)` and `source[i] -> (x, label)`."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]: ...


def check_data(data: Any) -> None:
  if isinstance(data, ArrayDataset):
    return
  if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
    raise ValueError(
      "data must be an ArrayDataset or a random-access source with __len__ and "
      f"__getitem__ returning (x, label); got {type(data).__name__}"
    )
  if len(data) < 1:
    raise ValueError(f"data source {data!r} is empty")


def example_rng(seed: int, position: int) -> np.random.Generator:
  return np.random.default_rng([SEED_TAG_TRANSFORM, seed, position])


def _stack(examples: Sequence[np.ndarray], what: str) -> np.ndarray:
  shapes = {np.shape(e) for e in examples}
  if len(shapes) > 1:
    raise ValueError(
      f"{what} have different shapes {sorted(shapes)}; pass a transform that maps "
      "every example to one shape (e.g. imagenet_train_transform)"
    )
  return np.stack(examples)


def load_examples(
  data: ArrayDataset | RandomAccessSource,
  split: str,
  indices: np.ndarray,
  positions: np.ndarray,
  seed: int,
  transform: Transform | None,
  executor: concurrent.futures.Executor | None,
) -> tuple[np.ndarray, np.ndarray]:
  """Gathers examples by index: (float32 inputs, int32 labels)."""
  if isinstance(data, ArrayDataset):
    x = data.normalize(getattr(data, f"x_{split}")[indices])
    y = getattr(data, f"y_{split}")[indices]
    if transform is not None:
      x = _stack(
        [transform(xi, example_rng(seed, p)) for xi, p in zip(x, positions)],
        "transformed examples",
      )
    return np.asarray(x, np.float32), y

  def load_chunk(chunk: tuple[np.ndarray, np.ndarray]) -> list[tuple[np.ndarray, int]]:
    chunk_indices, chunk_positions = chunk
    items = read_items(data, chunk_indices)
    if transform is not None:
      items = [
        (transform(x, example_rng(seed, int(p))), label)
        for (x, label), p in zip(items, chunk_positions, strict=True)
      ]
    return items

  # A task per chunk of examples, not per example: per-example futures cost
  # more than reading an in-memory record (experiments/benchmarks, pipeline).
  num_chunks = 1 if executor is None else max(1, min(len(indices) // _MIN_CHUNK, _MAX_CHUNKS))
  chunks = list(zip(np.array_split(indices, num_chunks), np.array_split(positions, num_chunks)))
  if executor is None or num_chunks == 1:
    items = [item for chunk in chunks for item in load_chunk(chunk)]
  else:
    items = [item for part in executor.map(load_chunk, chunks) for item in part]
  x = _stack([item[0] for item in items], "examples")
  y = np.fromiter((item[1] for item in items), np.int32, count=len(items))
  return np.asarray(x, np.float32), y


# Chunks of a batch read by the thread pool: enough to keep a few reader
# threads busy (PIL decoding and ArrayRecord reads release the GIL), few
# enough that the per-task overhead stays small next to the reads.
_MIN_CHUNK = 64
_MAX_CHUNKS = 16


def read_items(data: RandomAccessSource, indices: np.ndarray) -> list[tuple[np.ndarray, int]]:
  """Reads examples by index, in one ``__getitems__`` call where the source has one."""
  if hasattr(data, "__getitems__"):
    items = data.__getitems__([int(i) for i in indices])
    if len(items) != len(indices):
      raise ValueError(
        f"{data!r}.__getitems__ returned {len(items)} examples for {len(indices)} indices"
      )
    return list(items)
  return [data[int(i)] for i in indices]
