"""A validation split held out from the training set, for choosing hyperparameters.

``config.validation_fraction`` > 0 holds out that fraction of the training
examples, chosen by a permutation seeded with ``config.validation_seed``
alone (never the run's seed), so every seed and every grid member of a
selection trains on the same kept examples and is measured on the same
held-out ones. The run then trains on the kept part and evaluates on the
held-out part in place of the test set, which it never reads; its summary
says ``"evaluated_split": "validation"`` so that a validation accuracy is
never read as a test accuracy. 0.0 (the default) leaves the data as loaded.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from bigbatch_jax.data.arrays import SEED_TAG_VALIDATION, ArrayDataset


def evaluated_split(fraction: float) -> str:
  """The split a run with this ``config.validation_fraction`` evaluates: "validation" or "test"."""
  return "validation" if fraction else "test"


def split_sizes(num_train: int, fraction: float) -> tuple[int, int]:
  """(kept, held out) examples for ``fraction`` of ``num_train``; a bad fraction raises.

  The held-out count is ``round(fraction * num_train)``.
  """
  if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
    raise ValueError(
      f"config.validation_fraction={fraction!r}; valid: 0.0 (no split) or a number in (0, 1)"
    )
  if fraction == 0:
    return num_train, 0
  if not 0 < fraction < 1:
    raise ValueError(
      f"config.validation_fraction={fraction!r}; valid: 0.0 (no split) or a fraction in (0, 1), "
      "e.g. 0.1"
    )
  held = round(fraction * num_train)
  if held < 1 or held >= num_train:
    raise ValueError(
      f"config.validation_fraction={fraction} of {num_train} training examples holds out "
      f"{held}; the validation split and the kept training set each need >= 1 example"
    )
  return num_train - held, held


def hold_out_validation(dataset: ArrayDataset, fraction: float, split_seed: int) -> ArrayDataset:
  """``dataset`` with ``fraction`` of its training set moved into the evaluated split.

  Args:
    dataset: the loaded dataset (its test split is dropped: never evaluated).
    fraction: the held-out fraction of the training set, in (0, 1).
    split_seed: seeds the permutation that chooses the held-out examples
      (``config.validation_seed``), independently of the run's seed.

  The kept set's size against the run's batch is checked by the plan
  (``training.plan_sizes.check_validation_split``).

  Returns:
    An ``ArrayDataset`` whose ``x_train``/``y_train`` are the kept examples (in
    their original order) and whose ``x_test``/``y_test`` are the held-out
    ones, named ``NAME[validation F, seed S]``.
  """
  integral = isinstance(split_seed, numbers.Integral) and not isinstance(split_seed, bool)
  if not integral or split_seed < 0:
    raise ValueError(f"config.validation_seed={split_seed!r}; valid: an int >= 0")
  kept_count, _ = split_sizes(dataset.num_train, fraction)
  rng = np.random.default_rng([SEED_TAG_VALIDATION, split_seed])
  order = rng.permutation(dataset.num_train)
  kept = np.sort(order[:kept_count])
  held = np.sort(order[kept_count:])
  return dataclasses.replace(
    dataset,
    name=f"{dataset.name}[validation {fraction}, seed {split_seed}]",
    x_train=dataset.x_train[kept],
    y_train=dataset.y_train[kept],
    x_test=dataset.x_train[held],
    y_test=dataset.y_train[held],
  )
