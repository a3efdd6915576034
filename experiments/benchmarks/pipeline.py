"""Part "pipeline": what the host side adds to an epoch.

An epoch is run as ``train_and_evaluate`` runs it: ``BatchIterator`` (a
prefetch thread) -> ``put_batch`` -> the compiled step, no host sync until
the end. Its wall time is compared with the number of steps times the pure
step time, measured on one batch already on the device, alternating epoch
and pure runs so that both see the same load. Two sources:

* in memory: an ``ArrayDataset`` of uint8 28x28x1 images (MNIST's format),
  gathered with one numpy take and normalized per batch;
* streaming: ``TfdsStreamSource("mnist")`` under ``tfds.testing.mock_data``,
  read in chunks on a thread pool. Two mocks: records generated once and
  kept in memory (``as_data_source_fn``), which measures what the pipeline
  itself adds (the target), and tfds's default mock, which generates every
  record in Python when it is read (~75 us per example on this machine):
  that source alone is slower than the step consumes examples, so its row
  shows a source-bound epoch, not the pipeline's cost.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from bigbatch_jax import data as data_lib
from bigbatch_jax.training import parallel
from experiments.benchmarks import steps, timing
from experiments.benchmarks.report import Section, Target

IMAGE_SHAPE = (28, 28, 1)
TOLERANCE = 1.10


def _in_memory(num_train: int) -> data_lib.ArrayDataset:
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (num_train, *IMAGE_SHAPE), dtype=np.uint8)
  y = rng.integers(0, 10, num_train).astype(np.int32)
  return data_lib.ArrayDataset(
    "in-memory uint8", x, y, x[:16], y[:16], 10, mean=np.array(0.5), std=np.array(0.5)
  )


STORED = "streaming TfdsStreamSource (mock mnist, records in memory)"
GENERATED = "streaming TfdsStreamSource (mock mnist, tfds generates each record on read)"


class _StoredRecords:
  """MNIST-shaped records generated once, served through ``tfds.data_source``'s interface."""

  def __init__(self, num_examples: int):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (num_examples, *IMAGE_SHAPE), dtype=np.uint8)
    labels = rng.integers(0, 10, num_examples)
    self.records = [{"image": im, "label": lab} for im, lab in zip(images, labels, strict=True)]

  def as_data_source_fn(self):
    """A replacement for ``DatasetBuilder.as_data_source`` (a function: it binds the builder)."""

    def as_data_source(builder, split, **kwargs):
      del split, kwargs
      self.dataset_info = builder.info
      return self

    return as_data_source

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    return self.records[index]

  def __getitems__(self, indices) -> list[dict]:
    return [self.records[i] for i in indices]


def _epoch_seconds(built: steps.Built, source, batch: int, num_steps: int) -> float:
  start = time.perf_counter()
  with data_lib.BatchIterator(source, batch, seed=0) as batches:
    for _ in range(num_steps):
      built.state, metrics = built.fn(built.state, parallel.put_batch(next(batches), built.mesh))
  timing.block((built.state, metrics))
  return time.perf_counter() - start


def _data_seconds(source, batch: int, num_steps: int) -> float:
  """The host side alone: BatchIterator batches (no step), without prefetch overlap."""
  start = time.perf_counter()
  with data_lib.BatchIterator(source, batch, seed=0, prefetch=0) as batches:
    for _ in range(num_steps):
      next(batches)
  return time.perf_counter() - start


def _pure_seconds(built: steps.Built, num_steps: int) -> float:
  start = time.perf_counter()
  for _ in range(num_steps):
    out = built.run()
  timing.block(out)
  return time.perf_counter() - start


def _measure(name, source, args) -> tuple[list[str], Target]:
  batch, num_steps = args.batch, args.epoch_steps
  config = steps.f1_config("lb+lr+gbn", batch)
  built = steps.build_step(config, hidden=args.hidden, input_shape=IMAGE_SHAPE)
  _epoch_seconds(built, source, batch, 2)  # warm: threads, caches, first transfers
  _pure_seconds(built, 2)
  epochs, pures = [], []
  for _ in range(args.epoch_repeats):
    epochs.append(_epoch_seconds(built, source, batch, num_steps))
    pures.append(_pure_seconds(built, num_steps))
  ratios = [e / p for e, p in zip(epochs, pures)]
  ratio = float(np.median(ratios))
  host = _data_seconds(source, batch, num_steps)
  row = [
    name,
    str(num_steps),
    f"{np.median(epochs):.2f}",
    f"{np.median(pures):.2f}",
    f"{host:.2f}",
    f"{ratio:.3f}",
    f"{min(ratios):.3f}-{max(ratios):.3f}",
  ]
  target = Target(f"epoch / (steps x step), {name}", ratio, f"<= {TOLERANCE}", ratio <= TOLERANCE)
  return row, target


def run(args) -> list[Section]:
  num_train = args.batch * args.epoch_steps
  rows, targets = [], []
  row, target = _measure("in memory (uint8 images)", _in_memory(num_train), args)
  rows.append(row)
  targets.append(target)
  import tensorflow_datasets as tfds

  from bigbatch_jax.data.tfds_sources import TfdsStreamSource

  # tfds's mock serves records kept in memory: what the pipeline adds on top of
  # a source that reads fast (the target row).
  stored = _StoredRecords(num_train)
  with tfds.testing.mock_data(num_examples=num_train, as_data_source_fn=stored.as_data_source_fn()):
    source = TfdsStreamSource("mnist", "train")
    row, target = _measure(STORED, source, args)
  rows.append(row)
  targets.append(target)
  # tfds's default mock generates every example in Python when it is read.
  with tfds.testing.mock_data(num_examples=num_train):
    source = TfdsStreamSource("mnist", "train")
    row, _ = _measure(GENERATED, source, args)
  rows.append(row)
  text = (
    f"F1 at batch {args.batch}; an epoch of {args.epoch_steps} steps "
    f"({num_train} examples), {args.epoch_repeats} alternating repeats of (epoch, the same "
    "number of steps on a device-resident batch). 'ratio' is the median of epoch time over "
    "pure time; the range is min-max. 'host data alone' builds the same batches without "
    "steps or prefetch: when it approaches the step time, the prefetch thread cannot hide it "
    "on two cores that also run the step (the threads share the cores, and Python-level "
    "reads hold the GIL). The generated-on-read mock is source-bound: its 'host data alone' "
    "exceeds the pure step time, so no pipeline could hide it; it has no target. "
    f"Devices: {jax.device_count()}."
  )
  return [
    Section(
      f"Input pipeline (batch {args.batch})",
      ["source", "steps", "epoch s", "steps x step s", "host data alone s", "ratio", "range"],
      rows,
      text,
      targets,
    )
  ]
