"""In-memory datasets: MNIST-1D, synthetic, npz files and small tfds datasets.

`load_dataset(spec, seed=..., **options)` is the single entry point; it
returns an `ArrayDataset` holding the train and test splits as numpy arrays.
ImageNet is too large for memory and is streamed instead
(`bigbatch_jax.data.TfdsStreamSource`).

Image datasets are kept as uint8 (a quarter of the float32 memory: Caltech-101
at 224x224 is 1.4 GB as uint8, 5.5 GB as float32) together with the
per-channel statistics that normalise them; `ArrayDataset.normalize` turns a
gathered batch into float32, and the pipeline does it per batch. Datasets that
are born as floats (MNIST-1D, synthetic) are stored normalised already.
"""

from __future__ import annotations

import os
import pathlib
import random
import tempfile
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from bigbatch_jax.data.arrays import SEED_TAG_SYNTHETIC, ArrayDataset
from bigbatch_jax.data.schedule import check_int
from bigbatch_jax.data.tfds_sources import load_tfds_arrays

_MNIST1D_CANONICAL_SEED = 42  # mnist1d.data.get_dataset_args() default.
_CACHE_ENV = "BIGBATCH_JAX_CACHE"

DATASET_SPECS = (
  "mnist1d",
  "synthetic",
  "npz:/path/to/file.npz",
  "tfds:mnist",
  "tfds:cifar10",
  "tfds:cifar100",
  "tfds:caltech101",
)


def load_dataset(spec: str, *, seed: int | None = None, **options: Any) -> ArrayDataset:
  """Loads a dataset into memory from a spec string.

  Specs and their options:
    * "mnist1d": MNIST-1D (Greydanus 2020) generated locally by the mnist1d
      package and cached (see `mnist1d_cache_path`). Options: num_samples
      (5000, a multiple of 10), train_split (0.8). `seed` is the generation
      seed; None means 42, the package's default generation seed. Inputs
      (N, 40) float32, standardised with the scalar mean and std of the
      training split (one scalar, as the package itself standardises, so
      the relative scale of the 40 positions is kept).
    * "synthetic": Gaussian class centroids plus unit noise, a small
      learnable problem for tests. Options: num_train (512), num_test (128),
      input_shape ((16,)), num_classes (4), class_sep (1.0: centroid scale).
    * "npz:/path/file.npz": arrays x_train, y_train, x_test, y_test. uint8
      inputs are images, normalised per channel (last axis of (N, H, W, C),
      else one scalar) with train statistics; float inputs are used as they
      are. Option: num_classes (default: largest label + 1).
    * "tfds:NAME" for mnist, cifar10, cifar100, caltech101: read with
      tfds.data_source (needs `pip install -e '.[tfds]'` from the clone), normalised
      as in the bigBatch reference. caltech101 pools the tfds train and test
      splits and splits them 3:1 (Jaiswal & Taura) with `seed`; its images
      are resized to image_size x image_size. Options: data_dir, download
      (False); caltech101 also image_size (224), train_fraction (0.75).
      tfds:imagenet2012 is streamed with TfdsStreamSource instead.

  Args:
    spec: which dataset, one of the forms above.
    seed: generation / split seed for mnist1d, synthetic and caltech101
      (None: 42 for mnist1d, 0 otherwise); unused by the others.
    **options: the options of that spec, listed above.

  Returns:
    The dataset as an ArrayDataset.
  """
  if not isinstance(spec, str):
    raise ValueError(f"dataset spec must be a string, one of {DATASET_SPECS}; got {spec!r}")
  if seed is not None and (
    isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0
  ):
    raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
  if spec == "mnist1d":
    _check_options(spec, options, ("num_samples", "train_split"))
    return load_mnist1d(seed=_MNIST1D_CANONICAL_SEED if seed is None else seed, **options)
  if spec == "synthetic":
    _check_options(
      spec, options, ("num_train", "num_test", "input_shape", "num_classes", "class_sep")
    )
    return make_synthetic(seed=0 if seed is None else seed, **options)
  if spec.startswith("npz:"):
    _check_options(spec, options, ("num_classes",))
    path = spec[len("npz:") :]
    if not path:
      raise ValueError(f"npz spec needs a path after 'npz:', e.g. 'npz:/data/x.npz'; got {spec!r}")
    return load_npz(path, **options)
  if spec.startswith("tfds:"):
    name = spec[len("tfds:") :]
    allowed = ["data_dir", "download"]
    if name == "caltech101":
      allowed += ["image_size", "train_fraction"]
    _check_options(spec, options, tuple(allowed))
    return load_tfds_arrays(name, seed=0 if seed is None else seed, **options)
  raise ValueError(f"unknown dataset spec {spec!r}; valid specs: {', '.join(DATASET_SPECS)}")


def _check_options(spec: str, options: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    valid = ", ".join(allowed) if allowed else "none"
    raise ValueError(f"unknown option(s) {unknown} for dataset {spec!r}; valid options: {valid}")


# --- MNIST-1D -------------------------------------------------------------------


def cache_dir() -> pathlib.Path:
  """Directory of generated-data caches: $BIGBATCH_JAX_CACHE, else ~/.cache/bigbatch_jax."""
  override = os.environ.get(_CACHE_ENV)
  if override:
    return pathlib.Path(override).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "bigbatch_jax"


def mnist1d_cache_path(num_samples: int, seed: int) -> pathlib.Path:
  """Cache file of the MNIST-1D pool generated with (num_samples, seed)."""
  return cache_dir() / f"mnist1d_{num_samples}_{seed}.npz"


def _mnist1d_version() -> str:
  from importlib import metadata

  return metadata.version("mnist1d")


def _generate_mnist1d(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  from mnist1d.data import get_dataset, get_dataset_args

  args = get_dataset_args()
  args.num_samples = num_samples
  args.seed = seed
  # The whole shuffled pool comes back in "x"; the train/test split is taken
  # below (same prefix split as the package), so one cache serves any split.
  args.train_split = 1.0
  # mnist1d seeds the global `random` and `np.random` generators; restore
  # them so that loading data does not change the caller's random streams.
  np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
  try:
    with tempfile.TemporaryDirectory() as tmp:
      data = get_dataset(
        args,
        path=os.path.join(tmp, "mnist1d.pkl"),
        verbose=False,
        download=False,
        regenerate=True,
      )
  finally:
    np.random.set_state(np_state)  # noqa: NPY002
    random.setstate(py_state)
  return np.asarray(data["x"], np.float64), np.asarray(data["y"], np.int32)


def _mnist1d_pool(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  path = mnist1d_cache_path(num_samples, seed)
  version = _mnist1d_version()
  if path.exists():
    try:
      with np.load(path, allow_pickle=False) as f:
        # A different mnist1d release may generate different data.
        if str(f["mnist1d_version"]) == version:
          return f["x"], f["y"]
    except (OSError, ValueError, KeyError, EOFError):
      pass  # An unreadable cache is regenerated and overwritten below.
  x, y = _generate_mnist1d(num_samples, seed)
  path.parent.mkdir(parents=True, exist_ok=True)
  # Write-then-rename: concurrent runs never read a half-written cache.
  fd, tmp_name = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, x=x, y=y, mnist1d_version=np.array(version))
    os.replace(tmp_name, path)
  except BaseException:
    if os.path.exists(tmp_name):
      os.remove(tmp_name)
    raise
  return x, y


def load_mnist1d(*, seed: int, num_samples: int = 5000, train_split: float = 0.8) -> ArrayDataset:
  """MNIST-1D generated locally (never downloaded) and cached; see `load_dataset`."""
  num_samples = check_int("mnist1d num_samples", num_samples, 10)
  if num_samples % 10:
    raise ValueError(
      f"mnist1d num_samples must be a multiple of 10 (equal examples per digit), got {num_samples}"
    )
  if not isinstance(train_split, float | int) or not 0 < train_split < 1:
    raise ValueError(f"mnist1d train_split must be in (0, 1), got {train_split!r}")
  split = int(num_samples * train_split)
  if split in (0, num_samples):
    raise ValueError(
      f"train_split={train_split} leaves an empty split of {num_samples} samples; "
      f"choose a fraction strictly between {1 / num_samples} and {1 - 1 / num_samples}"
    )
  x, y = _mnist1d_pool(num_samples, seed)
  mean, std = x[:split].mean(), x[:split].std()
  x = ((x - mean) / std).astype(np.float32)
  return ArrayDataset(
    name="mnist1d",
    x_train=x[:split],
    y_train=y[:split],
    x_test=x[split:],
    y_test=y[split:],
    num_classes=10,
  )


# --- synthetic --------------------------------------------------------------------


def make_synthetic(
  *,
  seed: int,
  num_train: int = 512,
  num_test: int = 128,
  input_shape: tuple[int, ...] = (16,),
  num_classes: int = 4,
  class_sep: float = 1.0,
) -> ArrayDataset:
  """Gaussian-centroid classification data, deterministic in seed; see `load_dataset`.

  Class c has centroid mu_c ~ N(0, class_sep^2 I); an example is mu_y + N(0, I)
  with balanced labels, so nearest-centroid classification beats chance.
  """
  num_train = check_int("synthetic num_train", num_train, 1)
  num_test = check_int("synthetic num_test", num_test, 0)
  num_classes = check_int("synthetic num_classes", num_classes, 2)
  shape = tuple(input_shape) if isinstance(input_shape, tuple | list) else None
  if not shape or any(
    isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 1 for d in shape
  ):
    raise ValueError(
      f"synthetic input_shape must be a non-empty tuple of positive ints, got {input_shape!r}"
    )
  if not isinstance(class_sep, float | int) or class_sep <= 0:
    raise ValueError(f"synthetic class_sep must be a positive number, got {class_sep!r}")
  rng = np.random.default_rng([SEED_TAG_SYNTHETIC, seed, 0])
  centroids = class_sep * rng.standard_normal((num_classes, *shape))

  def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
    y = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
    x = centroids[y] + rng.standard_normal((n, *shape))
    return x.astype(np.float32), y

  x_train, y_train = sample(num_train)
  x_test, y_test = sample(num_test)
  return ArrayDataset("synthetic", x_train, y_train, x_test, y_test, num_classes)


# --- npz ----------------------------------------------------------------------------

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def image_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std of uint8 images in [0, 1] units: per channel for (N, H, W, C), else scalar."""
  axes = tuple(range(x.ndim - 1)) if x.ndim == 4 else None
  total = 0.0
  total_sq = 0.0
  count = 0
  # Chunked float64 sums: no float copy of the whole array.
  for start in range(0, len(x), 4096):
    chunk = x[start : start + 4096].astype(np.float64) / 255.0
    total = total + chunk.sum(axis=axes)
    total_sq = total_sq + np.square(chunk).sum(axis=axes)
    count += chunk.size // (x.shape[-1] if axes else 1)
  mean = total / count
  var = np.maximum(total_sq / count - np.square(mean), 0.0)
  # A constant channel has no spread to divide by; leave its scale alone.
  std = np.where(var > 0, np.sqrt(var), 1.0)
  return mean.astype(np.float32), std.astype(np.float32)


def load_npz(path: str | os.PathLike, *, num_classes: int | None = None) -> ArrayDataset:
  """Loads and validates an arrays file; see `load_dataset` ("npz:...")."""
  path = pathlib.Path(path).expanduser()
  arrays = _read_npz(path)
  name = f"npz:{path}"
  _check_npz_arrays(name, arrays)
  labels = np.concatenate([arrays["y_train"], arrays["y_test"]])
  num_classes = _npz_num_classes(name, labels, num_classes)
  y_train = arrays["y_train"].astype(np.int32)
  y_test = arrays["y_test"].astype(np.int32)
  if arrays["x_train"].dtype == np.uint8:
    mean, std = image_statistics(arrays["x_train"])
    return ArrayDataset(
      name, arrays["x_train"], y_train, arrays["x_test"], y_test, num_classes, mean, std
    )
  return ArrayDataset(
    name,
    arrays["x_train"].astype(np.float32),
    y_train,
    arrays["x_test"].astype(np.float32),
    y_test,
    num_classes,
  )


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  """The arrays of ``_NPZ_KEYS`` in the .npz file ``path``; an error naming what is wrong."""
  if not path.is_file():
    raise FileNotFoundError(f"npz dataset file not found: {str(path)!r}")
  try:
    archive = np.load(path, allow_pickle=False)
  except (ValueError, OSError, zipfile.BadZipFile) as e:
    raise ValueError(
      f"{str(path)!r} is not a readable numpy .npz file (a zip archive written by "
      f"numpy.savez): {type(e).__name__}: {e}"
    ) from e
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise ValueError(f"{str(path)!r} holds a single array; expected an .npz with keys {_NPZ_KEYS}")
  with archive:
    missing = [k for k in _NPZ_KEYS if k not in archive.files]
    if missing:
      raise ValueError(
        f"{str(path)!r} is missing key(s) {missing}; it has {sorted(archive.files)}, "
        f"and needs {list(_NPZ_KEYS)}"
      )
    return {k: archive[k] for k in _NPZ_KEYS}


def _check_npz_arrays(name: str, arrays: dict[str, np.ndarray]) -> None:
  """Each split's shapes, dtypes and finiteness, and train and test alike."""
  for split in ("train", "test"):
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    if x.ndim < 2:
      raise ValueError(f"{name}: x_{split} must have shape (N, ...), got {x.shape}")
    if y.ndim != 1:
      raise ValueError(f"{name}: y_{split} must have shape (N,), got {y.shape}")
    if len(x) != len(y):
      raise ValueError(
        f"{name}: x_{split} has {len(x)} examples but y_{split} has {len(y)}; they must match"
      )
    if y.dtype.kind not in "iu":
      raise ValueError(f"{name}: y_{split} must hold integer class labels, got dtype {y.dtype}")
    if x.dtype != np.uint8 and x.dtype.kind != "f":
      raise ValueError(f"{name}: x_{split} must be uint8 images or floats, got dtype {x.dtype}")
    if x.dtype.kind == "f":
      bad = int(np.count_nonzero(~np.isfinite(x)))
      if bad:
        raise ValueError(
          f"{name}: x_{split} contains {bad} NaN/Inf value(s); inputs must be finite"
        )
  if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
    raise ValueError(
      f"{name}: train examples have shape {arrays['x_train'].shape[1:]} but test "
      f"examples have shape {arrays['x_test'].shape[1:]}; they must match"
    )
  if (arrays["x_train"].dtype == np.uint8) != (arrays["x_test"].dtype == np.uint8):
    raise ValueError(
      f"{name}: x_train is {arrays['x_train'].dtype} and x_test is "
      f"{arrays['x_test'].dtype}; both must be uint8 images or both floats"
    )
  if len(arrays["x_train"]) == 0:
    raise ValueError(f"{name}: x_train is empty")


def _npz_num_classes(name: str, labels: np.ndarray, num_classes: int | None) -> int:
  """The number of classes: ``num_classes`` checked against the labels, or inferred from them."""
  if labels.min() < 0:
    raise ValueError(f"{name}: label {labels.min()} is negative; labels must be >= 0")
  if num_classes is not None:
    num_classes = check_int("npz num_classes", num_classes, 1)
    if labels.max() >= num_classes:
      raise ValueError(
        f"{name}: label {labels.max()} is out of range [0, {num_classes}) "
        f"for num_classes={num_classes}"
      )
    return num_classes
  if labels.max() >= np.iinfo(np.int32).max:
    raise ValueError(f"{name}: label {labels.max()} does not fit in int32")
  num_classes = int(labels.max()) + 1
  absent = num_classes - len(np.unique(labels))
  if absent:
    raise ValueError(
      f"{name}: label {labels.max()} makes {num_classes} classes, but {absent} of the labels "
      f"0..{labels.max()} have no example. Pass the number of classes "
      "(--config.npz_num_classes=N) or remove the examples of an 'ignore' label"
    )
  return num_classes
