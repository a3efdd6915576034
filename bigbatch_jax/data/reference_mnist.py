"""The data side of the reference protocol's MNIST items: augmentation (item 2), Normalize (item 7).

Where each applies is the protocol's (:data:`bigbatch_jax.protocol.PROTOCOL_ITEMS`);
this module builds what the run's resolved protocol says is in effect. It
imports ``bigbatch_jax.protocol``, never the reverse.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from bigbatch_jax.data import augment as augment_lib
from bigbatch_jax.protocol import Protocol, RunKind


def reference_mnist_augmentation(protocol: Protocol, dataset, augment: str):
  """The reference MNIST augmentation for ``dataset``, or None where it is not in effect.

  It applies to in-memory images (examples (H, W, C) stored as uint8 with
  their normalisation): the padding is the black pixel in the dataset's
  normalised units (:func:`bigbatch_jax.data.augment.black_pixel`). The
  "reference" protocol skips other data (MNIST-1D, synthetic vectors); asking
  for it explicitly there, or together with another ``config.augment``, is an
  error.

  Args:
    protocol: the run's protocol.
    dataset: the training data (``mean``, ``std`` and ``input_shape`` are read).
    augment: ``config.augment``.

  Returns:
    A batch augmentation ``(x, rng) -> x``, or None.
  """
  if not protocol.applies("reference_mnist_augment", RunKind.of(dataset=dataset)):
    return None
  if augment != "none":
    raise ValueError(
      f"config.augment={augment!r} and the reference MNIST augmentation both augment the "
      "training batch; set config.augment='none' or config.reference_mnist_augment=False"
    )
  fill = augment_lib.black_pixel(dataset.mean, dataset.std)
  return functools.partial(augment_lib.reference_mnist_augment, fill=fill)


def reference_mnist_normalization(protocol: Protocol, dataset):
  """``dataset`` normalised with mean 0.5 and std 0.5 where item 7 is in effect, else ``dataset``.

  The reference normalises MNIST with ``Normalize(0.5, 0.5)`` whatever the
  route; here it applies to in-memory uint8 images of one channel (shape
  (H, W) or (H, W, 1)), e.g. an npz of MNIST, which otherwise carries its own
  mean and std. The reference protocol skips other data (MNIST-1D, colour
  images, streamed data); asking for it explicitly there is an error.

  Args:
    protocol: the run's protocol.
    dataset: the loaded dataset (``ArrayDataset`` or a streamed one).

  Returns:
    The dataset, with its ``mean`` and ``std`` replaced where the item applies.
  """
  if not protocol.applies("reference_mnist_normalize", RunKind.of(dataset=dataset)):
    return dataset
  half = np.full_like(np.asarray(dataset.mean, np.float32), 0.5)
  return dataclasses.replace(dataset, mean=half, std=half)
