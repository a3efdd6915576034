"""A run's data from its config: the dataset (in memory or streamed) and its preprocessing."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import ml_collections

from bigbatch_jax.data.arrays import ArrayDataset
from bigbatch_jax.data.augment import (
  cifar_augment,
  imagenet_eval_transform,
  imagenet_train_transform,
)
from bigbatch_jax.data.gather import RandomAccessSource
from bigbatch_jax.data.reference_mnist import (
  reference_mnist_augmentation,
  reference_mnist_normalization,
)
from bigbatch_jax.data.sources import load_dataset
from bigbatch_jax.data.tfds_sources import TFDS_STREAMED, TfdsStreamSource
from bigbatch_jax.data.validation import hold_out_validation, split_sizes
from bigbatch_jax.protocol import Protocol, resolve_protocol


@dataclasses.dataclass(frozen=True)
class StreamedDataset:
  """A dataset too large for memory (ImageNet): two splits decoded on demand.

  It has the attributes of ``ArrayDataset`` that the training loop and the
  plan read (``num_train``, ``num_test``, ``num_classes``, ``input_shape``);
  the examples come from ``train`` and ``test``, random-access sources of
  decoded images of any size, which the config's transforms crop to
  ``input_shape``.
  """

  name: str
  train: RandomAccessSource
  test: RandomAccessSource
  num_classes: int
  input_shape: tuple[int, ...]

  @property
  def num_train(self) -> int:
    return len(self.train)

  @property
  def num_test(self) -> int:
    return len(self.test)


AUGMENTATIONS = ("none", "cifar", "imagenet")


def _streamed_tfds_name(spec: str) -> str | None:
  """The tfds name when ``spec`` is a streamed tfds dataset ("tfds:imagenet2012"), else None."""
  name = spec[len("tfds:") :] if spec.startswith("tfds:") else None
  return name if name in TFDS_STREAMED else None


def load_data(
  config: ml_collections.ConfigDict, protocol: Protocol | None = None
) -> ArrayDataset | StreamedDataset:
  """The config's dataset: in memory, or streamed for tfds:imagenet2012.

  ``protocol`` is the run's resolved protocol, whose MNIST normalisation
  (item 7) applies here: a run resolves it once and passes it; None resolves
  it from the config (for a dataset loaded outside a run).

  With ``config.validation_fraction`` > 0 the evaluated split is that fraction
  of the training set, held out by ``config.validation_seed``
  (``bigbatch_jax.data.validation``); the test set is not read.
  """
  split_sizes(1000, config.validation_fraction)  # checks the fraction before any loading
  streamed = _streamed_tfds_name(config.dataset)
  if streamed is not None and config.validation_fraction:
    raise ValueError(
      f"config.validation_fraction={config.validation_fraction} needs an in-memory dataset; "
      f"{config.dataset} is streamed: hold out a validation split with "
      "config.tfds_train_split/tfds_eval_split (e.g. 'train[:90%]' and 'train[90%:]')"
    )
  if streamed is not None:
    # ImageNet does not fit in memory: open the splits, decode per example.
    splits = [
      TfdsStreamSource(
        streamed, split, data_dir=config.tfds_data_dir, download=config.tfds_download
      )
      for split in (config.tfds_train_split, config.tfds_eval_split)
    ]
    size = config.image_size
    return StreamedDataset(config.dataset, *splits, splits[0].num_classes, (size, size, 3))
  options = {}
  if config.dataset == "mnist1d":
    options["num_samples"] = config.mnist1d_num_samples
  if config.dataset.startswith("npz:") and config.npz_num_classes is not None:
    options["num_classes"] = config.npz_num_classes
  if config.dataset.startswith("tfds:"):
    if config.tfds_data_dir is not None:
      options["data_dir"] = config.tfds_data_dir
    options["download"] = config.tfds_download
    if config.dataset == "tfds:caltech101":
      options["image_size"] = config.image_size
  dataset = load_dataset(config.dataset, seed=config.data_seed, **options)
  # The reference protocol's Normalize(0.5, 0.5) for MNIST on every route (npz too).
  if protocol is None:
    protocol = resolve_protocol(config)
  dataset = reference_mnist_normalization(protocol, dataset)
  if config.validation_fraction:
    dataset = hold_out_validation(dataset, config.validation_fraction, config.validation_seed)
  return dataset


@dataclasses.dataclass(frozen=True)
class InputPipeline:
  """The config's preprocessing: a batch augmentation and per-example transforms."""

  augment: Any  # (x, rng) -> x on the float32 training batch, or None
  train_transform: Any  # (example, rng) -> x for each training example, or None
  eval_transform: Any  # (example, rng) -> x for each evaluated example, or None


def input_pipeline(config: ml_collections.ConfigDict, dataset, protocol: Protocol) -> InputPipeline:
  """The augmentation and transforms ``config.augment`` asks for, checked against the dataset.

  ``protocol`` is the run's resolved protocol (the plan's): its MNIST
  augmentation (item 2) replaces ``config.augment`` where it is in effect.
  """
  kind = config.augment
  if kind not in AUGMENTATIONS:
    raise ValueError(f"config.augment={kind!r}; valid: {', '.join(AUGMENTATIONS)}")
  # The reference protocol's MNIST augmentation, where it applies.
  reference = reference_mnist_augmentation(protocol, dataset, kind)
  if reference is not None:
    return InputPipeline(reference, None, None)
  if isinstance(dataset, StreamedDataset):
    if kind == "cifar":
      raise ValueError(
        f"config.augment='cifar' needs an in-memory image dataset; {dataset.name} is streamed "
        "(use 'imagenet')"
      )
    size = config.image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
      raise ValueError(f"config.image_size must be a positive int, got {size!r}")
    # The reference evaluates on Scale(256) + CenterCrop(224): keep that ratio.
    eval_transform = functools.partial(
      imagenet_eval_transform, size=size, resize=round(size * 256 / 224)
    )
    # Streamed images differ in size, so even "none" needs the eval crop.
    train_transform = (
      functools.partial(imagenet_train_transform, size=size)
      if kind == "imagenet"
      else eval_transform
    )
    return InputPipeline(None, train_transform, eval_transform)
  if kind == "imagenet":
    raise ValueError(
      f"config.augment='imagenet' crops decoded images of any size, which only a streamed "
      f"dataset (tfds:imagenet2012) provides; {dataset.name} is held in memory (use 'cifar' "
      "or 'none')"
    )
  if kind == "cifar" and len(dataset.input_shape) != 3:
    raise ValueError(
      f"config.augment='cifar' crops (H, W, C) images; {dataset.name} has examples of shape "
      f"{dataset.input_shape}"
    )
  return InputPipeline(cifar_augment if kind == "cifar" else None, None, None)


def split_source(dataset: ArrayDataset | StreamedDataset, split: str):
  """What the pipeline reads for ``split``: the in-memory dataset, or a streamed split."""
  if not isinstance(dataset, StreamedDataset):
    return dataset
  return dataset.train if split == "train" else dataset.test
