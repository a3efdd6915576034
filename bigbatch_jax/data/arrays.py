"""The in-memory dataset type shared by every source, and the seed tags of the data package."""

from __future__ import annotations

import dataclasses

import numpy as np

# Leading words of the numpy seed keys used in this package. A SeedSequence
# ignores trailing zeros ([s, 0] seeds like [s]), so every key has a fixed
# length and a distinct leading tag: no two uses of one seed can collide.
SEED_TAG_PERMUTATION = 0
SEED_TAG_AUGMENT = 1
SEED_TAG_TRANSFORM = 2
SEED_TAG_SPLIT = 3
SEED_TAG_SYNTHETIC = 4
SEED_TAG_VALIDATION = 5


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
  """A classification dataset held in memory as numpy arrays.

  Attributes:
    name: the spec it was loaded from, e.g. "mnist1d" or "tfds:cifar10".
    x_train: (N, ...) inputs: float32 (already normalised) or uint8 images.
    y_train: (N,) int32 labels in [0, num_classes).
    x_test: (M, ...) inputs with the same example shape and dtype as x_train.
    y_test: (M,) int32 labels.
    num_classes: number of classes.
    mean: for uint8 inputs, the per-channel mean in [0, 1] pixel units
      (shape () or (C,)); None for float inputs.
    std: for uint8 inputs, the per-channel standard deviation; None for
      float inputs.
  """

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  mean: np.ndarray | None = None
  std: np.ndarray | None = None

  def __post_init__(self):
    for split in ("train", "test"):
      x = getattr(self, f"x_{split}")
      y = getattr(self, f"y_{split}")
      if not isinstance(x, np.ndarray) or x.dtype not in (np.uint8, np.float32):
        raise ValueError(
          f"{self.name}: x_{split} must be a uint8 or float32 numpy array, "
          f"got {getattr(x, 'dtype', type(x).__name__)}"
        )
      if x.ndim < 2:
        raise ValueError(f"{self.name}: x_{split} must have shape (N, ...), got {x.shape}")
      if not isinstance(y, np.ndarray) or y.dtype != np.int32 or y.ndim != 1:
        raise ValueError(
          f"{self.name}: y_{split} must be a 1-D int32 numpy array, got "
          f"{getattr(y, 'dtype', type(y).__name__)} "
          f"of shape {getattr(y, 'shape', None)}"
        )
      if len(x) != len(y):
        raise ValueError(f"{self.name}: x_{split} has {len(x)} examples but y_{split} has {len(y)}")
    if len(self.x_train) == 0:
      raise ValueError(f"{self.name}: the training split is empty")
    if len(self.x_test) == 0:
      # Every evaluation (and the run's result) is on the test split.
      raise ValueError(f"{self.name}: the test split (x_test) is empty; it needs >= 1 example")
    if 0 in self.x_train.shape[1:]:
      raise ValueError(
        f"{self.name}: examples have shape {self.x_train.shape[1:]}, with no features; "
        "every dimension of an example must be >= 1"
      )
    if self.x_train.dtype != self.x_test.dtype:
      raise ValueError(
        f"{self.name}: x_train is {self.x_train.dtype} but x_test is "
        f"{self.x_test.dtype}; both splits must share a dtype"
      )
    if self.x_train.shape[1:] != self.x_test.shape[1:]:
      raise ValueError(
        f"{self.name}: train examples have shape {self.x_train.shape[1:]} but test "
        f"examples have shape {self.x_test.shape[1:]}"
      )
    if not isinstance(self.num_classes, int) or self.num_classes < 1:
      raise ValueError(f"{self.name}: num_classes must be a positive int, got {self.num_classes!r}")
    for split in ("train", "test"):
      y = getattr(self, f"y_{split}")
      if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
        bad = y.min() if y.min() < 0 else y.max()
        raise ValueError(
          f"{self.name}: y_{split} holds label {bad}, outside "
          f"[0, {self.num_classes}) for num_classes={self.num_classes}"
        )
    is_uint8 = self.x_train.dtype == np.uint8
    if is_uint8 != (self.mean is not None and self.std is not None):
      raise ValueError(
        f"{self.name}: uint8 inputs need mean and std (their normalisation) and "
        f"float inputs need neither; got dtype {self.x_train.dtype} with "
        f"mean={self.mean}, std={self.std}"
      )
    if is_uint8:
      channels = self.x_train.shape[-1]
      for field in ("mean", "std"):
        value = np.asarray(getattr(self, field), np.float32)
        if value.shape not in ((), (1,), (channels,)):
          raise ValueError(
            f"{self.name}: {field} must have shape () or ({channels},) to match "
            f"the last input axis; got {value.shape}"
          )
        object.__setattr__(self, field, value)
      if np.any(self.std <= 0):
        raise ValueError(f"{self.name}: std must be positive, got {self.std}")

  @property
  def input_shape(self) -> tuple[int, ...]:
    """Shape of one example (without the batch axis)."""
    return tuple(self.x_train.shape[1:])

  @property
  def num_train(self) -> int:
    """Number of training examples."""
    return len(self.x_train)

  @property
  def num_test(self) -> int:
    """Number of test examples."""
    return len(self.x_test)

  def normalize(self, x: np.ndarray) -> np.ndarray:
    """Returns a float32 copy of gathered inputs, normalised for uint8 images.

    uint8 images become `(x / 255 - mean) / std`; float inputs are stored
    normalised already and are returned as float32.
    """
    if self.mean is None:
      return np.asarray(x, np.float32)
    if x.dtype != np.uint8:
      raise ValueError(f"{self.name}: normalize expects uint8 images like x_train, got {x.dtype}")
    scale = 1.0 / (255.0 * self.std)
    shift = self.mean / self.std
    return x.astype(np.float32) * scale - shift
