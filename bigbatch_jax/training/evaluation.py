"""Evaluation over whole splits with the running statistics, logged as one record."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from bigbatch_jax import data as data_lib
from bigbatch_jax.data.run_data import split_source
from bigbatch_jax.training import parallel
from bigbatch_jax.training.state import TrainState


def evaluate(
  eval_fn,
  state: TrainState,
  dataset,
  mesh: Mesh,
  split: str,
  *,
  batch_size: int,
  transform=None,
) -> dict[str, float]:
  """Loss, accuracy and error over a whole split, with the running statistics.

  With a population's state and eval step (``population.population_eval_step``)
  each value is a list, one per member. ``transform``: the per-example eval
  transform of a streamed dataset (``data.input_pipeline``), else None.
  """
  totals = None
  batches = data_lib.eval_batches(
    split_source(dataset, split),
    batch_size,
    split=split,
    transform=transform,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  for batch in batches:
    sums = eval_fn(state, parallel.put_batch(batch, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  # The float32 ratios, then the error in float64 (as a Python float would be).
  accuracy = np.asarray(totals["correct"] / totals["count"], np.float64)
  values = {
    f"{split}_loss": np.asarray(totals["loss_sum"] / totals["count"], np.float64),
    f"{split}_accuracy": accuracy,
    f"{split}_error": 1.0 - accuracy,
  }
  return {k: v.tolist() for k, v in values.items()}


def evaluation_record(eval_fn, state, dataset, spec, mesh, step: int) -> dict:
  """The record of an evaluation at ``step``: test split, and train with ``eval_on_train``.

  ``spec``: the run's :class:`~bigbatch_jax.training.spec.RunSpec`.
  """
  transform = None
  if isinstance(dataset, data_lib.StreamedDataset):
    transform = data_lib.input_pipeline(spec.data, dataset, spec.plan.protocol).eval_transform
  record = {"step": step, "epoch": spec.plan.epoch_at(step)}
  settings = spec.settings
  for split in ("test", "train") if settings.eval_on_train else ("test",):
    record.update(
      evaluate(
        eval_fn,
        state,
        dataset,
        mesh,
        split,
        batch_size=settings.eval_batch_size,
        transform=transform,
      )
    )
  return record
