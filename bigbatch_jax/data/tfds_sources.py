"""TensorFlow Datasets through `tfds.data_source`: random access, no TensorFlow to read.

`tfds.data_source` reads ArrayRecord files and decodes images with PIL/OpenCV,
so reading needs only `tensorflow-datasets` (the `[tfds]` extra), not
TensorFlow. *Preparing* a dataset (download and conversion, once per machine)
does need TensorFlow: `tfds build NAME --file_format=array_record`.

Small datasets (mnist, cifar10, cifar100, caltech101) are read fully into an
`ArrayDataset`; ImageNet is streamed with `TfdsStreamSource`.
"""

from __future__ import annotations

import operator
import re
from typing import Any

import numpy as np

from bigbatch_jax.data import augment
from bigbatch_jax.data.arrays import SEED_TAG_SPLIT, ArrayDataset

# The install hints name commands that work from a clone (the package is on no index).
TFDS_EXTRA_INSTALL = "pip install -e '.[tfds]'"
# Preparing a dataset (tfds build, or download=True) encodes its images with
# TensorFlow, which reading does not need and the [tfds] extra does not install.
PREPARE_INSTALL = "pip install tensorflow"

TFDS_IN_MEMORY = ("mnist", "cifar10", "cifar100", "caltech101")
TFDS_STREAMED = ("imagenet2012",)
TFDS_DATASETS = TFDS_IN_MEMORY + TFDS_STREAMED

# Normalisation of the bigBatch reference (preprocess.get_transform): MNIST uses
# mean 0.5 / std 0.5; every other dataset, CIFAR included, the ImageNet stats.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
  "mnist": ((0.5,), (0.5,)),
  "cifar10": (augment.IMAGENET_MEAN, augment.IMAGENET_STD),
  "cifar100": (augment.IMAGENET_MEAN, augment.IMAGENET_STD),
  "caltech101": (augment.IMAGENET_MEAN, augment.IMAGENET_STD),
  "imagenet2012": (augment.IMAGENET_MEAN, augment.IMAGENET_STD),
}


def import_tfds():
  """Imports tensorflow_datasets, or says how to install it."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(
      "the tfds datasets need tensorflow-datasets; install it from the clone with "
      f"`{TFDS_EXTRA_INSTALL}`"
    ) from e
  return tfds


def open_data_source(name: str, split: str, *, data_dir: str | None, download: bool):
  """`tfds.data_source(name, split)` with an actionable error when data is missing."""
  tfds = import_tfds()
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=download)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"tfds has no dataset named {name!r} (see `tfds.list_builders()`)") from e
  except ModuleNotFoundError as e:
    # tfds imports what downloading and preparing need lazily, mid-download,
    # and re-raises some of these errors with a new message and no name.
    found = re.search(r"No module named '([\w.]+)'", str(e))
    module = e.name or (found.group(1) if found else None)
    raise ImportError(
      f"preparing tfds dataset {name!r} (download={download}) needs the module {module!r}, "
      f"which is not installed: {_install_hint(module)}, then rerun"
    ) from e
  except (NotImplementedError, AssertionError, FileNotFoundError, KeyError) as e:
    # What tfds raises for data that is absent, half prepared ("splits is
    # empty") or stored as TFRecord only.
    raise FileNotFoundError(
      f"tfds dataset {name!r} split {split!r} is not prepared in "
      f"{data_dir or '$TFDS_DATA_DIR or ~/tensorflow_datasets'} ({type(e).__name__}: "
      f"{str(e).splitlines()[0] if str(e) else ''}).\n"
      f"Prepare it once in ArrayRecord format; preparing needs TensorFlow, which reading "
      f"does not (`{PREPARE_INSTALL}`): `tfds build {name} --file_format=array_record"
      f"{f' --data_dir={data_dir}' if data_dir else ''}`, or let the run do it with "
      f"--config.tfds_download=True (download=True)."
    ) from e


def _install_hint(module: str | None) -> str:
  """The command that installs ``module`` for tfds's download and preparation."""
  if module is not None and module.split(".")[0] == "tensorflow":
    return f"`{PREPARE_INSTALL}`"
  if module is not None and module.split(".")[0] == "importlib_resources":
    return f"`{TFDS_EXTRA_INSTALL}` from the clone (the [tfds] extra declares it)"
  if module is None:
    return f"`{PREPARE_INSTALL}` (preparing needs TensorFlow) and `{TFDS_EXTRA_INSTALL}`"
  return f"`pip install {module.split('.')[0]}`"


def _features(source, name: str):
  features = source.dataset_info.features
  missing = [k for k in ("image", "label") if k not in features]
  if missing:
    raise ValueError(
      f"tfds dataset {name!r} has no {missing} feature(s) (it has {list(features)}); "
      "only image classification datasets with 'image' and 'label' are supported"
    )
  return features


class TfdsStreamSource:
  """Random-access view of one tfds split that decodes on demand.

  `source[i]` returns `(image, label)`: the decoded uint8 (H, W, C) image and
  an int label. Nothing is held in memory, so this serves ImageNet; pair it
  with `imagenet_train_transform` / `imagenet_eval_transform` in
  `BatchIterator` / `eval_batches`.

  Args:
    name: tfds name, e.g. "imagenet2012" (any dataset with 'image' and
      'label' features works).
    split: tfds split, e.g. "train", "validation" or "train[:10%]".
    data_dir: tfds data directory (default $TFDS_DATA_DIR or ~/tensorflow_datasets).
    download: let tfds download and prepare the data if absent (needs
      tensorflow; ImageNet needs its manual download).
  """

  def __init__(self, name: str, split: str, *, data_dir: str | None = None, download: bool = False):
    if not isinstance(name, str) or not name:
      raise ValueError(f"name must be a tfds dataset name such as 'imagenet2012', got {name!r}")
    self.name = name
    self.split = split
    self._source = open_data_source(name, split, data_dir=data_dir, download=download)
    self.num_classes: int = int(_features(self._source, name)["label"].num_classes)
    self._batched_reads = _has_working_getitems(self._source)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    index = operator.index(index)
    n = len(self)
    if not -n <= index < n:
      raise IndexError(f"index {index} out of range for {self!r} of length {n}")
    example = self._source[index % n]
    return np.asarray(example["image"]), int(example["label"])

  def __getitems__(self, indices: list[int]) -> list[tuple[np.ndarray, int]]:
    """Reads several examples in one call (ArrayRecord reads them in parallel)."""
    n = len(self)
    keys = np.asarray(indices, np.int64).reshape(-1)
    bad = keys[(keys < -n) | (keys >= n)]
    if bad.size:
      raise IndexError(f"indices {bad[:5].tolist()} out of range for {self!r} of length {n}")
    keys = (keys % n).tolist()
    if self._batched_reads:
      examples = self._source.__getitems__(keys)
    else:
      examples = [self._source[k] for k in keys]
    return [(np.asarray(e["image"]), int(e["label"])) for e in examples]

  def __repr__(self) -> str:
    return f"TfdsStreamSource({self.name!r}, split={self.split!r})"


def _has_working_getitems(source) -> bool:
  """Whether ``source.__getitems__`` reads a batch of records.

  tfds data sources have it (ArrayRecord reads the records in parallel), but
  the data source of ``tfds.testing.mock_data`` (tfds 4.9) installs it without
  its ``self`` argument, so it fails with a TypeError: one probe read decides.
  """
  if not hasattr(source, "__getitems__") or len(source) == 0:
    return False
  try:
    return len(source.__getitems__([0])) == 1
  except TypeError:
    return False


def _read_split(source, image_size: int | None) -> tuple[np.ndarray, np.ndarray]:
  """Decodes every example of a data source into (uint8 images, int32 labels)."""
  n = len(source)
  images: np.ndarray | None = None
  labels = np.empty(n, np.int32)
  for i in range(n):
    example = source[i]
    image = np.asarray(example["image"])
    if image_size is not None:
      image = augment.resize_image(image, image_size, image_size)
    if images is None:
      images = np.empty((n, *image.shape), np.uint8)
    if image.shape != images.shape[1:]:
      raise ValueError(
        f"example {i} has image shape {image.shape}, but earlier ones have "
        f"{images.shape[1:]}; pass image_size to resize them to a common size"
      )
    images[i] = image
    labels[i] = example["label"]
  if images is None:
    raise ValueError(f"data source {source!r} is empty")
  return images, labels


def load_tfds_arrays(
  name: str,
  *,
  seed: int,
  data_dir: str | None = None,
  download: bool = False,
  image_size: int = 224,
  train_fraction: float = 0.75,
) -> ArrayDataset:
  """Reads a small tfds dataset fully into memory; see `load_dataset` ("tfds:NAME")."""
  if name in TFDS_STREAMED:
    raise ValueError(
      f"tfds:{name} is too large to load into memory; stream it with "
      f"TfdsStreamSource({name!r}, split='train') and imagenet_train_transform"
    )
  if name not in TFDS_IN_MEMORY:
    raise ValueError(
      f"unknown tfds dataset {name!r}; valid: {', '.join(TFDS_DATASETS)} "
      f"(imagenet2012 through TfdsStreamSource)"
    )
  if name == "caltech101":
    _check_caltech101_options(image_size, train_fraction)
  # Caltech101's images come in many sizes: resized to one. The other
  # datasets' images share a size and stay as they are.
  size = image_size if name == "caltech101" else None
  splits = []
  for split in ("train", "test"):
    source = open_data_source(name, split, data_dir=data_dir, download=download)
    splits.append(_read_split(source, image_size=size))
  num_classes = int(_features(source, name)["label"].num_classes)
  train, test = splits
  if name == "caltech101":
    train, test = _split_caltech101(train, test, seed=seed, train_fraction=train_fraction)
  mean, std = NORMALIZATION[name]
  return ArrayDataset(
    f"tfds:{name}",
    *train,
    *test,
    num_classes,
    np.asarray(mean, np.float32),
    np.asarray(std, np.float32),
  )


def _check_caltech101_options(image_size: Any, train_fraction: Any) -> None:
  if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
    raise ValueError(f"caltech101 image_size must be a positive int, got {image_size!r}")
  if not isinstance(train_fraction, float | int) or not 0 < train_fraction < 1:
    raise ValueError(
      f"caltech101 train_fraction must be in (0, 1) (Jaiswal & Taura: 0.75), got {train_fraction!r}"
    )


Arrays = tuple[np.ndarray, np.ndarray]


def _split_caltech101(
  train: Arrays, test: Arrays, *, seed: int, train_fraction: float
) -> tuple[Arrays, Arrays]:
  """Both tfds splits pooled and split again, ``train_fraction`` for training, by ``seed``.

  Jaiswal & Taura pool all images and split them 3:1; the tfds train/test
  split (30 images per class for training) is not theirs.
  """
  images = np.concatenate([train[0], test[0]])
  labels = np.concatenate([train[1], test[1]])
  n = len(labels)
  n_train = round(n * train_fraction)
  if not 0 < n_train < n:
    raise ValueError(f"train_fraction={train_fraction} of {n} images leaves an empty split")
  order = np.random.default_rng([SEED_TAG_SPLIT, seed, 0]).permutation(n)
  first, rest = order[:n_train], order[n_train:]
  return (images[first], labels[first]), (images[rest], labels[rest])
