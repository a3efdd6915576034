"""Tests of the datasets: mnist1d, synthetic, npz and tfds (offline, on mock data)."""

import re
import sys

import numpy as np
import pytest

from bigbatch_jax import data
from bigbatch_jax.data import sources, tfds_sources

# --- MNIST-1D -------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch):
  """A private generated-data cache for the test."""
  path = tmp_path / "cache"
  monkeypatch.setenv("BIGBATCH_JAX_CACHE", str(path))
  return path


def _assert_same(a: data.ArrayDataset, b: data.ArrayDataset) -> None:
  for field in ("x_train", "y_train", "x_test", "y_test"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_mnist1d_shapes_labels_and_standardisation(cache):
  ds = data.load_dataset("mnist1d", num_samples=200, seed=0)
  assert ds.x_train.shape == (160, 40) and ds.x_test.shape == (40, 40)
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  assert ds.input_shape == (40,) and ds.num_train == 160 and ds.num_classes == 10
  labels = np.concatenate([ds.y_train, ds.y_test])
  assert labels.min() >= 0 and labels.max() < 10
  # 20 examples of each digit, shuffled across the split.
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, 20))
  assert abs(ds.x_train.mean()) < 1e-5 and abs(ds.x_train.std() - 1) < 1e-4


def test_mnist1d_is_deterministic_and_cached(cache, monkeypatch):
  first = data.load_dataset("mnist1d", num_samples=200, seed=5)
  assert data.mnist1d_cache_path(200, 5).parent == cache
  assert data.mnist1d_cache_path(200, 5).exists()

  def fail(*args):
    raise AssertionError("the second load must come from the cache")

  monkeypatch.setattr(sources, "_generate_mnist1d", fail)
  _assert_same(first, data.load_dataset("mnist1d", num_samples=200, seed=5))


def test_mnist1d_cache_hit_equals_fresh_generation(tmp_path, monkeypatch):
  monkeypatch.setenv("BIGBATCH_JAX_CACHE", str(tmp_path / "a"))
  data.load_dataset("mnist1d", num_samples=200, seed=1)
  cached = data.load_dataset("mnist1d", num_samples=200, seed=1)
  monkeypatch.setenv("BIGBATCH_JAX_CACHE", str(tmp_path / "b"))
  fresh = data.load_dataset("mnist1d", num_samples=200, seed=1)
  _assert_same(cached, fresh)


def test_mnist1d_unreadable_cache_is_regenerated(cache):
  good = data.load_dataset("mnist1d", num_samples=200, seed=2)
  data.mnist1d_cache_path(200, 2).write_bytes(b"not an npz file")
  _assert_same(good, data.load_dataset("mnist1d", num_samples=200, seed=2))


def test_mnist1d_seed_changes_data_and_global_rng_is_untouched(cache):
  np.random.seed(123)  # noqa: NPY002 -- the legacy global state is what mnist1d touches
  expected_next = np.random.random()  # noqa: NPY002
  np.random.seed(123)  # noqa: NPY002
  a = data.load_dataset("mnist1d", num_samples=200, seed=0)
  assert np.random.random() == expected_next  # noqa: NPY002
  b = data.load_dataset("mnist1d", num_samples=200, seed=1)
  assert not np.array_equal(a.x_train, b.x_train)


def test_mnist1d_default_seed_is_the_package_default(cache):
  _assert_same(
    data.load_dataset("mnist1d", num_samples=200),
    data.load_dataset("mnist1d", num_samples=200, seed=42),
  )


def test_mnist1d_train_split_option(cache):
  ds = data.load_dataset("mnist1d", num_samples=200, seed=0, train_split=0.5)
  assert ds.num_train == 100 and ds.num_test == 100


@pytest.mark.parametrize(
  ("options", "message"),
  [
    ({"num_samples": 205}, "multiple of 10 .*got 205"),
    ({"num_samples": 0}, "num_samples must be an int >= 10, got 0"),
    ({"train_split": 1.5}, r"train_split must be in \(0, 1\), got 1.5"),
    ({"batch": 3}, r"unknown option\(s\) \['batch'\].*num_samples, train_split"),
  ],
)
def test_mnist1d_bad_options(cache, options, message):
  with pytest.raises(ValueError, match=message):
    data.load_dataset("mnist1d", **options)


def test_unknown_spec_lists_the_valid_ones():
  with pytest.raises(ValueError, match=r"unknown dataset spec 'mnist2d'.*mnist1d, synthetic"):
    data.load_dataset("mnist2d")
  with pytest.raises(ValueError, match="seed must be a non-negative int"):
    data.load_dataset("synthetic", seed=-1)


# --- synthetic ------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_seeded():
  a = data.load_dataset("synthetic", seed=3)
  _assert_same(a, data.load_dataset("synthetic", seed=3))
  assert not np.array_equal(a.x_train, data.load_dataset("synthetic", seed=4).x_train)
  assert a.x_train.shape == (512, 16) and a.x_test.shape == (128, 16)
  assert a.num_classes == 4 and a.x_train.dtype == np.float32


def test_synthetic_is_learnable():
  ds = data.load_dataset("synthetic", seed=0, input_shape=(4, 4), num_classes=5)
  assert ds.input_shape == (4, 4)
  x_train = ds.x_train.reshape(ds.num_train, -1)
  x_test = ds.x_test.reshape(ds.num_test, -1)
  centroids = np.stack([x_train[ds.y_train == c].mean(0) for c in range(5)])
  distances = ((x_test[:, None, :] - centroids[None]) ** 2).sum(-1)
  accuracy = np.mean(distances.argmin(1) == ds.y_test)
  assert accuracy > 0.2 + 0.5, accuracy  # chance is 0.2


def test_synthetic_bad_options():
  with pytest.raises(ValueError, match=r"input_shape must be .* got \(0, 3\)"):
    data.load_dataset("synthetic", input_shape=(0, 3))
  with pytest.raises(ValueError, match="num_classes must be an int >= 2, got 1"):
    data.load_dataset("synthetic", num_classes=1)


# --- ArrayDataset ---------------------------------------------------------------------


def test_array_dataset_validates_its_fields():
  x = np.zeros((4, 2), np.float32)
  y = np.zeros(4, np.int32)
  with pytest.raises(ValueError, match="y_train must be a 1-D int32"):
    data.ArrayDataset("d", x, y.astype(np.int64), x, y, 2)
  with pytest.raises(ValueError, match="uint8 inputs need mean and std"):
    data.ArrayDataset("d", x.astype(np.uint8), y, x.astype(np.uint8), y, 2)
  with pytest.raises(ValueError, match=r"label 2, outside \[0, 2\)"):
    data.ArrayDataset("d", x, y, x, y + 2, 2)


# --- npz ------------------------------------------------------------------------------


def _write_npz(path, **overrides):
  rng = np.random.default_rng(0)
  arrays = {
    "x_train": rng.standard_normal((12, 3, 2)),
    "y_train": np.arange(12) % 3,
    "x_test": rng.standard_normal((6, 3, 2)),
    "y_test": np.arange(6) % 3,
  }
  arrays.update(overrides)
  arrays = {k: v for k, v in arrays.items() if v is not None}
  np.savez(path, **arrays)
  return arrays


def test_npz_round_trip_floats(tmp_path):
  path = tmp_path / "d.npz"
  arrays = _write_npz(path)
  ds = data.load_dataset(f"npz:{path}")
  for key, value in arrays.items():
    np.testing.assert_array_equal(getattr(ds, key), value.astype(getattr(ds, key).dtype))
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  assert ds.num_classes == 3 and ds.input_shape == (3, 2) and ds.mean is None
  assert data.load_dataset(f"npz:{path}", num_classes=7).num_classes == 7


def test_npz_uint8_images_are_standardised_per_channel(tmp_path):
  rng = np.random.default_rng(1)
  x_train = rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
  x_train[..., 2] //= 4  # channels with different statistics
  path = tmp_path / "img.npz"
  _write_npz(
    path,
    x_train=x_train,
    y_train=np.arange(20) % 2,
    x_test=rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8),
    y_test=np.arange(5) % 2,
  )
  ds = data.load_dataset(f"npz:{path}")
  assert ds.x_train.dtype == np.uint8 and ds.mean.shape == (3,)
  np.testing.assert_array_equal(ds.x_train, x_train)
  normed = ds.normalize(ds.x_train)
  assert normed.dtype == np.float32
  np.testing.assert_allclose(normed.mean(axis=(0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(normed.std(axis=(0, 1, 2)), 1, atol=1e-4)
  scaled = x_train / 255.0
  np.testing.assert_allclose(ds.mean, scaled.mean(axis=(0, 1, 2)), rtol=1e-5)


def test_npz_missing_file(tmp_path):
  missing = tmp_path / "nope.npz"
  with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
    data.load_dataset(f"npz:{missing}")


@pytest.mark.parametrize(
  ("overrides", "options", "message"),
  [
    (
      {"y_test": None},
      {},
      r"missing key\(s\) \['y_test'\]; it has \['x_test', 'x_train', 'y_train'\]",
    ),
    ({"y_train": np.arange(11) % 3}, {}, "x_train has 12 examples but y_train has 11"),
    ({"y_test": np.zeros(6, np.float32)}, {}, "y_test must hold integer .* float32"),
    ({"y_train": np.arange(12) - 1}, {}, "label -1 is negative"),
    ({}, {"num_classes": 2}, r"label 2 is out of range \[0, 2\) for num_classes=2"),
    (
      {"x_test": np.array([np.nan, 1.0, 1.0, 1.0, 1.0, np.nan] * 6).reshape(6, 3, 2)},
      {},
      "x_test contains 12 NaN/Inf",
    ),
    (
      {"x_train": np.full((12, 3, 2), np.inf)},
      {},
      "x_train contains 72 NaN/Inf",
    ),
    (
      {"x_test": np.zeros((6, 2, 3))},
      {},
      r"train examples have shape \(3, 2\) but test .*\(2, 3\)",
    ),
    ({"x_train": np.zeros((12, 3, 2), np.int16)}, {}, "uint8 images or floats, got dtype int16"),
  ],
)
def test_npz_validation_errors(tmp_path, overrides, options, message):
  path = tmp_path / "bad.npz"
  _write_npz(path, **overrides)
  with pytest.raises(ValueError, match=message):
    data.load_dataset(f"npz:{path}", **options)


def test_npz_not_an_archive(tmp_path):
  path = tmp_path / "junk.npz"
  path.write_bytes(b"garbage")
  with pytest.raises(ValueError, match=r"is not a readable numpy .npz file"):
    data.load_dataset(f"npz:{path}")


# --- tfds on mock data ----------------------------------------------------------------

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.fixture
def mock_tfds():
  with tfds.testing.mock_data(num_examples=8):
    yield


@pytest.mark.parametrize(
  ("name", "shape", "num_classes", "mean", "std"),
  [
    ("mnist", (28, 28, 1), 10, (0.5,), (0.5,)),
    ("cifar10", (32, 32, 3), 10, data.IMAGENET_MEAN, data.IMAGENET_STD),
    ("cifar100", (32, 32, 3), 100, data.IMAGENET_MEAN, data.IMAGENET_STD),
  ],
)
def test_tfds_in_memory(mock_tfds, name, shape, num_classes, mean, std):
  ds = data.load_dataset(f"tfds:{name}")
  assert ds.name == f"tfds:{name}"
  assert ds.x_train.shape == (8, *shape) and ds.x_test.shape == (8, *shape)
  assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
  assert ds.num_classes == num_classes
  assert ds.y_train.min() >= 0 and ds.y_train.max() < num_classes
  expected = (ds.x_train / 255.0 - np.asarray(mean)) / np.asarray(std)
  np.testing.assert_allclose(ds.normalize(ds.x_train), expected, rtol=1e-5, atol=1e-5)


def test_tfds_caltech101_pooled_three_to_one_split(mock_tfds):
  ds = data.load_dataset("tfds:caltech101", image_size=24, seed=0)
  # 8 mock train + 8 mock test images pooled, then split 3:1.
  assert ds.x_train.shape == (12, 24, 24, 3) and ds.x_test.shape == (4, 24, 24, 3)
  assert ds.num_classes == 102
  _assert_same(ds, data.load_dataset("tfds:caltech101", image_size=24, seed=0))
  other = data.load_dataset("tfds:caltech101", image_size=24, seed=1)
  assert not np.array_equal(ds.x_train, other.x_train)
  with pytest.raises(ValueError, match="train_fraction must be in"):
    data.load_dataset("tfds:caltech101", train_fraction=1.0)


def test_tfds_imagenet_streams(mock_tfds):
  with pytest.raises(ValueError, match=r"too large to load into memory.*TfdsStreamSource"):
    data.load_dataset("tfds:imagenet2012")
  source = data.TfdsStreamSource("imagenet2012", split="train")
  assert len(source) == 8 and source.num_classes == 1000
  image, label = source[3]
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
  assert isinstance(label, int) and 0 <= label < 1000
  with pytest.raises(IndexError, match="index 8 out of range"):
    source[8]
  # Batched reads (what BatchIterator uses) return the examples of per-index reads.
  batch = source.__getitems__([3, 0, -1])
  for (x, lab), i in zip(batch, [3, 0, 7], strict=True):
    np.testing.assert_array_equal(x, source[i][0])
    assert lab == source[i][1]
  with pytest.raises(IndexError, match=r"indices \[8\] out of range"):
    source.__getitems__([1, 8])
  train_x = data.imagenet_train_transform(image, np.random.default_rng(0))
  eval_x = data.imagenet_eval_transform(image)
  assert train_x.shape == eval_x.shape == (224, 224, 3)
  assert train_x.dtype == eval_x.dtype == np.float32

  with data.BatchIterator(
    source, 4, seed=0, transform=data.imagenet_train_transform, num_threads=2
  ) as batches:
    batch = next(batches)
  assert batch["x"].shape == (4, 224, 224, 3) and batch["y"].shape == (4,)

  evals = list(data.eval_batches(source, 6, transform=data.imagenet_eval_transform, num_threads=2))
  assert [b["mask"].sum() for b in evals] == [6, 2]
  assert evals[1]["x"].shape == (6, 224, 224, 3)
  np.testing.assert_array_equal(evals[1]["x"][2:], 0)


def test_tfds_unknown_name_lists_valid_ones(mock_tfds):
  with pytest.raises(ValueError, match=r"unknown tfds dataset 'svhn'.*mnist, cifar10"):
    data.load_dataset("tfds:svhn")
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['image_size'\]"):
    data.load_dataset("tfds:mnist", image_size=32)


def test_tfds_unprepared_data_names_the_fix(tmp_path):
  fix = "pip install tensorflow`): `tfds build mnist --file_format=array_record"
  fix += f" --data_dir={tmp_path}`"
  with pytest.raises(FileNotFoundError, match=re.escape(fix)):
    data.load_dataset("tfds:mnist", data_dir=str(tmp_path))


def test_missing_tfds_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match=re.escape("pip install -e '.[tfds]'")):
    tfds_sources.import_tfds()


@pytest.mark.parametrize(
  "module, named, command",
  [
    ("importlib_resources", True, "pip install -e '.[tfds]'"),
    ("tensorflow.compat", True, "pip install tensorflow"),
    ("apache_beam", True, "pip install apache_beam"),
    # tfds's feature encoding re-raises with a new message and no name.
    ("tensorflow", False, "pip install tensorflow"),
  ],
)
def test_a_module_the_download_lacks_names_the_install_command(monkeypatch, module, named, command):
  def data_source(*args, **kwargs):
    message = f"No module named {module!r}"
    if named:
      raise ModuleNotFoundError(message, name=module)
    raise ModuleNotFoundError(f'In <Image> with name "image":\n{message}')

  monkeypatch.setattr(tfds, "data_source", data_source)
  message = rf"preparing tfds dataset 'mnist' \(download=True\) needs the module '{module}'"
  with pytest.raises(ImportError, match=message + ".*" + re.escape(command)):
    data.load_dataset("tfds:mnist", download=True)


def test_the_tfds_extra_declares_what_the_download_imports():
  import configparser
  import pathlib

  setup = configparser.ConfigParser()
  setup.read(pathlib.Path(__file__).parents[1] / "setup.cfg")
  tfds_extra = setup["options.extras_require"]["tfds"]
  assert "importlib_resources" in tfds_extra and "tensorflow-datasets" in tfds_extra
