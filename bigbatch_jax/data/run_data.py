"""A run's data from its :class:`DataSpec`: the dataset (in memory or streamed) and transforms."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

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
from bigbatch_jax.data.validation import hold_out_validation
from bigbatch_jax.protocol import Protocol


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


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """The dataset and its preprocessing (``training.spec.data_spec`` reads it from a config)."""

  dataset: str
  data_seed: int | None
  mnist1d_num_samples: int
  npz_num_classes: int | None
  tfds_data_dir: str | None
  tfds_download: bool
  tfds_train_split: str
  tfds_eval_split: str
  image_size: int
  augment: str
  validation_fraction: float
  validation_seed: int


def streamed_tfds_name(spec: str) -> str | None:
  """The tfds name when ``spec`` is a streamed tfds dataset ("tfds:imagenet2012"), else None."""
  name = spec[len("tfds:") :] if spec.startswith("tfds:") else None
  return name if name in TFDS_STREAMED else None


def load_data(data: DataSpec, protocol: Protocol) -> ArrayDataset | StreamedDataset:
  """The spec's dataset: in memory, or streamed for tfds:imagenet2012.

  ``protocol`` is the run's resolved protocol, whose MNIST normalisation
  (item 7) applies here.

  With ``validation_fraction`` > 0 the evaluated split is that fraction
  of the training set, held out by ``validation_seed``
  (``bigbatch_jax.data.validation``); the test set is not read.
  """
  streamed = streamed_tfds_name(data.dataset)
  if streamed is not None:
    # ImageNet does not fit in memory: open the splits, decode per example.
    splits = [
      TfdsStreamSource(streamed, split, data_dir=data.tfds_data_dir, download=data.tfds_download)
      for split in (data.tfds_train_split, data.tfds_eval_split)
    ]
    size = data.image_size
    return StreamedDataset(data.dataset, *splits, splits[0].num_classes, (size, size, 3))
  options = {}
  if data.dataset == "mnist1d":
    options["num_samples"] = data.mnist1d_num_samples
  if data.dataset.startswith("npz:") and data.npz_num_classes is not None:
    options["num_classes"] = data.npz_num_classes
  if data.dataset.startswith("tfds:"):
    if data.tfds_data_dir is not None:
      options["data_dir"] = data.tfds_data_dir
    options["download"] = data.tfds_download
    if data.dataset == "tfds:caltech101":
      options["image_size"] = data.image_size
  dataset = load_dataset(data.dataset, seed=data.data_seed, **options)
  # The reference protocol's Normalize(0.5, 0.5) for MNIST on every route (npz too).
  dataset = reference_mnist_normalization(protocol, dataset)
  if data.validation_fraction:
    dataset = hold_out_validation(dataset, data.validation_fraction, data.validation_seed)
  return dataset


@dataclasses.dataclass(frozen=True)
class InputPipeline:
  """The run's preprocessing: a batch augmentation and per-example transforms."""

  augment: Any  # (x, rng) -> x on the float32 training batch, or None
  train_transform: Any  # (example, rng) -> x for each training example, or None
  eval_transform: Any  # (example, rng) -> x for each evaluated example, or None


def input_pipeline(data: DataSpec, dataset, protocol: Protocol) -> InputPipeline:
  """The augmentation and transforms ``data.augment`` asks for, checked against the dataset.

  ``protocol`` is the run's resolved protocol (the plan's): its MNIST
  augmentation (item 2) replaces ``augment`` where it is in effect.
  """
  kind = data.augment
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
    size = data.image_size
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
