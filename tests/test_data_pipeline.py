"""Tests of the example stream, the batch iterator, sharding and augmentation."""

import gc
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from bigbatch_jax import data
from bigbatch_jax.data import stream as stream_lib


def _indexed_dataset(n: int, image: bool = False) -> data.ArrayDataset:
  """Examples whose inputs hold their own index, so batches reveal the indices read."""
  if image:
    x = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 6, 6, 3))
    x = x + np.random.default_rng(0).standard_normal((n, 6, 6, 3)).astype(np.float32) * 1e-3
  else:
    x = np.arange(n, dtype=np.float32)[:, None]
  y = (np.arange(n) % 3).astype(np.int32)
  return data.ArrayDataset("indexed", x, y, x[:5], y[:5], 3)


def _indices(batch) -> np.ndarray:
  return np.rint(batch["x"].reshape(len(batch["x"]), -1)[:, 0]).astype(np.int64)


class _ListSource:
  """A random-access source of (image, label) with varying image sizes."""

  def __init__(self, n: int):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return np.full((4 + i % 3, 5, 1), i, np.uint8), i % 4


def _crop_to_3x3(image, rng):
  top = rng.integers(0, image.shape[0] - 2)
  return image[top : top + 3, :3].astype(np.float32)


# --- stream_indices -----------------------------------------------------------------


def test_every_epoch_is_a_permutation():
  n = 37
  stream = data.stream_indices(3, n, 0, 5 * n)
  assert stream.dtype == np.int64
  for epoch in range(5):
    np.testing.assert_array_equal(np.sort(stream[epoch * n : (epoch + 1) * n]), np.arange(n))
  assert not np.array_equal(stream[:n], stream[n : 2 * n]), "epochs must be reshuffled"


@pytest.mark.parametrize(("a", "b", "c"), [(0, 10, 100), (5, 37, 38), (30, 74, 200), (7, 7, 9)])
def test_stream_windows_concatenate(a, b, c):
  whole = data.stream_indices(11, 37, a, c - a)
  parts = np.concatenate(
    [data.stream_indices(11, 37, a, b - a), data.stream_indices(11, 37, b, c - b)]
  )
  np.testing.assert_array_equal(whole, parts)


def test_stream_depends_on_seed_only_through_the_permutations():
  assert not np.array_equal(
    data.stream_indices(0, 100, 0, 100), data.stream_indices(1, 100, 0, 100)
  )
  # seed s epoch e+1 is not seed s+1 epoch e (grain's seed + epoch scheme would be).
  assert not np.array_equal(
    data.stream_indices(0, 100, 100, 100), data.stream_indices(1, 100, 0, 100)
  )
  np.testing.assert_array_equal(
    data.stream_indices(5, 100, 30, 50), data.stream_indices(5, 100, 30, 50)
  )


def test_stream_indices_is_fast_for_large_batches():
  data.stream_indices(0, 50_000, 10**9, 16384)  # warm the permutation cache
  t0 = time.perf_counter()
  for k in range(10):
    data.stream_indices(0, 50_000, 10**9 + k * 16384, 16384)
  assert (time.perf_counter() - t0) / 10 < 0.05


def test_a_populations_streams_build_each_epoch_permutation_once(monkeypatch):
  # Ten streams read in turn: each keeps its own epoch's permutation, where a
  # cache shared by all streams would evict them and rebuild one per batch.
  built = []
  permutation = stream_lib.epoch_permutation
  monkeypatch.setattr(
    stream_lib, "epoch_permutation", lambda *key: built.append(key) or permutation(*key)
  )
  seeds = tuple(range(10))
  batches = data.PopulationBatches(_indexed_dataset(100), 10, seeds=seeds, prefetch=0)
  with batches:
    for _ in range(5):
      next(batches)
  assert sorted(built) == [(seed, 100, 0) for seed in seeds]


def test_a_population_builds_its_stacked_batches_on_one_prefetch_thread():
  def prefetching():
    return sum(t.name == "bigbatch-prefetch" for t in threading.enumerate())

  before = prefetching()
  batches = data.PopulationBatches(_indexed_dataset(100), 10, seeds=tuple(range(10)), prefetch=2)
  with batches:
    member_7 = {"x": next(batches)["x"][7]}
    np.testing.assert_array_equal(_indices(member_7), data.stream_indices(7, 100, 0, 10))
    assert prefetching() == before + 1
  assert not batches.threads_alive


@pytest.mark.parametrize(
  ("args", "message"),
  [
    ((-1, 10, 0, 1), "seed must be an int >= 0, got -1"),
    ((0, 0, 0, 1), "num_examples must be an int >= 1, got 0"),
    ((0, 10, 1.5, 1), "start must be an int >= 0, got 1.5"),
  ],
)
def test_stream_indices_rejects_bad_arguments(args, message):
  with pytest.raises(ValueError, match=message):
    data.stream_indices(*args)


# --- BatchIterator ----------------------------------------------------------------


def test_batches_follow_the_stream_and_cross_epoch_boundaries():
  n, b = 50, 16
  ds = _indexed_dataset(n)
  with data.BatchIterator(ds, b, seed=7) as batches:
    got = [next(batches) for _ in range(25)]  # 25 * 16 = 8 epochs of 50
    assert (batches.step, batches.offset) == (25, 400)
  assert all(batch["x"].shape == (b, 1) and batch["y"].shape == (b,) for batch in got)
  indices = np.concatenate([_indices(batch) for batch in got])
  np.testing.assert_array_equal(indices, data.stream_indices(7, n, 0, 400))
  np.testing.assert_array_equal(np.bincount(indices, minlength=n), np.full(n, 8))
  # Batch 3 holds positions 48..63: the last two of epoch 0 and 14 of epoch 1.
  np.testing.assert_array_equal(got[3]["y"], ds.y_train[_indices(got[3])])


def test_resume_from_an_offset_reproduces_the_run_with_augmentation():
  ds = _indexed_dataset(40, image=True)
  kwargs = dict(seed=1, augment=data.cifar_augment)
  with data.BatchIterator(ds, 8, **kwargs) as full:
    uninterrupted = [next(full) for _ in range(12)]
  for resume in (
    dict(start=4 * 8),
    dict(start_step=4),
    dict(start=4 * 8, start_step=4),
  ):
    with data.BatchIterator(ds, 8, **kwargs, **resume) as resumed:
      assert (resumed.step, resumed.offset) == (4, 32)
      for expected in uninterrupted[4:]:
        batch = next(resumed)
        np.testing.assert_array_equal(batch["x"], expected["x"])
        np.testing.assert_array_equal(batch["y"], expected["y"])
  # The augmentation really changed the inputs.
  assert not np.allclose(uninterrupted[0]["x"], ds.x_train[_indices(uninterrupted[0])])


def test_growing_batch_sizes():
  ds = _indexed_dataset(30)

  def schedule(step):
    return 4 * (1 + step // 3)  # 4, 4, 4, 8, 8, 8, 12, ...

  with data.BatchIterator(ds, schedule, seed=2) as batches:
    got = [next(batches) for _ in range(7)]
  assert [len(batch["y"]) for batch in got] == [4, 4, 4, 8, 8, 8, 12]
  total = sum(len(batch["y"]) for batch in got)
  np.testing.assert_array_equal(
    np.concatenate([_indices(batch) for batch in got]), data.stream_indices(2, 30, 0, total)
  )
  assert data.offset_at_step(schedule, 5) == 4 + 4 + 4 + 8 + 8
  with data.BatchIterator(ds, schedule, seed=2, start=28) as resumed:
    assert resumed.step == 5
    np.testing.assert_array_equal(next(resumed)["x"], got[5]["x"])
  with pytest.raises(ValueError, match="start=26 falls inside batch 4"):
    data.BatchIterator(ds, schedule, seed=2, start=26)


def test_start_must_be_a_batch_boundary_that_matches_start_step():
  ds = _indexed_dataset(30)
  with pytest.raises(ValueError, match="start=10 is not a batch boundary of batch size 4"):
    data.BatchIterator(ds, 4, seed=0, start=10)
  with pytest.raises(ValueError, match="start=12 does not match start_step=2"):
    data.BatchIterator(ds, 4, seed=0, start=12, start_step=2)


def test_process_shards_union_to_the_global_batch():
  ds = _indexed_dataset(50)
  with data.BatchIterator(ds, 12, seed=4) as full:
    global_batches = [next(full) for _ in range(6)]
  shards = []
  for p in range(4):
    with data.BatchIterator(ds, 12, seed=4, process_index=p, process_count=4) as it:
      shards.append([next(it) for _ in range(6)])
  for step, expected in enumerate(global_batches):
    for key in ("x", "y"):
      union = np.concatenate([shards[p][step][key] for p in range(4)])
      np.testing.assert_array_equal(union, expected[key])
      for p in range(4):
        np.testing.assert_array_equal(
          shards[p][step][key], data.shard_for_process(expected, p, 4)[key]
        )
  with (
    data.BatchIterator(ds, 10, seed=4, process_count=4) as bad,
    pytest.raises(ValueError, match="batch size 10 at step 0 is not divisible by process_count=4"),
  ):
    next(bad)


def test_source_with_per_example_transform_shards_exactly():
  source = _ListSource(23)
  kwargs = dict(seed=9, transform=_crop_to_3x3, num_threads=2)
  with data.BatchIterator(source, 8, **kwargs) as full:
    global_batches = [next(full) for _ in range(5)]
  assert global_batches[0]["x"].shape == (8, 3, 3, 1)
  indices = np.concatenate([b["x"][:, 0, 0, 0] for b in global_batches]).astype(np.int64)
  np.testing.assert_array_equal(indices, data.stream_indices(9, 23, 0, 40))
  np.testing.assert_array_equal(np.concatenate([b["y"] for b in global_batches]), indices % 4)
  # The per-example rng is keyed by stream position, so shards equal the global batch.
  for p in range(2):
    with data.BatchIterator(source, 8, process_index=p, process_count=2, **kwargs) as it:
      for expected in global_batches:
        shard = data.shard_for_process(expected, p, 2)
        np.testing.assert_array_equal(next(it)["x"], shard["x"])
  untransformed = data.BatchIterator(source, 8, seed=9, prefetch=0)
  with pytest.raises(ValueError, match="examples have different shapes"):
    next(untransformed)
  untransformed.close()


class _BatchedSource(_ListSource):
  """A source that reads batches with __getitems__ and counts how it is called."""

  def __init__(self, n: int):
    super().__init__(n)
    self.single_reads = 0
    self.batched_reads = []

  def __getitem__(self, i):
    self.single_reads += 1
    return super().__getitem__(i)

  def __getitems__(self, indices):
    self.batched_reads.append(len(indices))
    return [super(_BatchedSource, self).__getitem__(i) for i in indices]


@pytest.mark.parametrize("num_threads", [1, 3])
def test_sources_with_getitems_are_read_in_chunks(num_threads):
  batched, plain = _BatchedSource(250), _ListSource(250)
  kwargs = dict(seed=2, transform=_crop_to_3x3, num_threads=num_threads, prefetch=0)
  with (
    data.BatchIterator(batched, 200, **kwargs) as fast,
    data.BatchIterator(plain, 200, **kwargs) as slow,
  ):
    for _ in range(3):
      a, b = next(fast), next(slow)
      np.testing.assert_array_equal(a["x"], b["x"])
      np.testing.assert_array_equal(a["y"], b["y"])
  assert batched.single_reads == 0
  assert sum(batched.batched_reads) == 600 and len(batched.batched_reads) < 600 / 10


def test_a_source_whose_getitems_drops_examples_is_an_error():
  class Short(_BatchedSource):
    def __getitems__(self, indices):
      return super().__getitems__(indices)[:-1]

  with (
    data.BatchIterator(Short(50), 8, seed=0, transform=_crop_to_3x3, prefetch=0) as batches,
    pytest.raises(ValueError, match="returned 7 examples for 8 indices"),
  ):
    next(batches)


def test_prefetch_and_synchronous_modes_agree():
  ds = _indexed_dataset(20, image=True)
  with data.BatchIterator(ds, 6, seed=3, prefetch=0, augment=data.cifar_augment) as sync:
    expected = [next(sync) for _ in range(5)]
  with data.BatchIterator(ds, 6, seed=3, prefetch=3, augment=data.cifar_augment) as threaded:
    for batch in expected:
      np.testing.assert_array_equal(next(threaded)["x"], batch["x"])


def test_producer_errors_reach_the_consumer():
  ds = _indexed_dataset(20)
  batches = data.BatchIterator(ds, lambda step: 4 if step < 2 else 0, seed=0)
  next(batches)
  next(batches)
  with pytest.raises(ValueError, match="batch size at step 2 must be a positive int, got 0"):
    next(batches)
  assert not batches.threads_alive
  with pytest.raises(StopIteration):
    next(batches)


def test_prefetch_thread_stops_on_close_and_on_collection():
  ds = _indexed_dataset(20)
  batches = data.BatchIterator(ds, 4, seed=0, prefetch=2)
  next(batches)
  assert batches.threads_alive
  batches.close()
  assert not batches.threads_alive

  batches = data.BatchIterator(ds, 4, seed=0, prefetch=2)
  thread = batches._thread
  next(batches)
  del batches
  gc.collect()
  thread.join(timeout=5)
  assert not thread.is_alive()


def test_interpreter_exits_with_an_open_iterator():
  # Batches are still being built (prefetch thread, reader pool) when the
  # script ends without close(): the interpreter must still exit promptly.
  script = textwrap.dedent(
    """
    import numpy as np
    from bigbatch_jax import data

    class Slow:
      def __len__(self):
        return 1000

      def __getitem__(self, i):
        return np.zeros((64, 64, 3), np.uint8), 0

    arrays = data.BatchIterator(data.load_dataset("synthetic"), 8, seed=0, prefetch=4)
    next(arrays)
    stream = data.BatchIterator(Slow(), 256, seed=0, prefetch=4, num_threads=2)
    next(stream)
    print("done")
    """
  )
  result = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "done"


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    (dict(batch_size=0), "batch size at step 0 must be a positive int, got 0"),
    (dict(batch_size="8"), "batch_size must be a positive int or a function"),
    (dict(process_index=2, process_count=2), r"process_index=2 must be in \[0, 2\)"),
    (dict(augment=3), "augment must be callable"),
    (dict(seed=-2), "seed must be an int >= 0, got -2"),
  ],
)
def test_batch_iterator_rejects_bad_arguments(kwargs, message):
  args = dict(batch_size=4, seed=0) | kwargs
  with pytest.raises(ValueError, match=message):
    data.BatchIterator(_indexed_dataset(10), **args)
  with pytest.raises(ValueError, match="data must be an ArrayDataset or a random-access source"):
    data.BatchIterator(object(), 4, seed=0)


def test_uint8_datasets_are_normalised_per_batch():
  x = np.random.default_rng(0).integers(0, 256, (10, 2, 2, 3), dtype=np.uint8)
  y = np.zeros(10, np.int32)
  mean, std = np.array([0.1, 0.2, 0.3], np.float32), np.array([0.5, 0.25, 2.0], np.float32)
  ds = data.ArrayDataset("u8", x, y, x, y, 1, mean, std)
  with data.BatchIterator(ds, 10, seed=0) as batches:
    batch = next(batches)
  order = data.stream_indices(0, 10, 0, 10)
  np.testing.assert_allclose(batch["x"], (x[order] / 255.0 - mean) / std, rtol=1e-5, atol=1e-6)
  assert batch["x"].dtype == np.float32


# --- shard_for_process and eval_batches ---------------------------------------------


def test_shard_for_process_slices_and_validates():
  batch = {"x": np.arange(12).reshape(6, 2), "y": np.arange(6)}
  shards = [data.shard_for_process(batch, p, 3) for p in range(3)]
  np.testing.assert_array_equal(np.concatenate([s["x"] for s in shards]), batch["x"])
  np.testing.assert_array_equal(shards[1]["y"], [2, 3])
  with pytest.raises(ValueError, match="batch size 6 is not divisible by process_count=4"):
    data.shard_for_process(batch, 0, 4)
  with pytest.raises(ValueError, match="must share a leading batch dimension"):
    data.shard_for_process({"x": np.zeros(4), "y": np.zeros(5)}, 0, 1)
  with pytest.raises(ValueError, match=r"process_index=3 must be in \[0, 3\)"):
    data.shard_for_process(batch, 3, 3)


def test_eval_batches_pad_the_last_batch_and_mask_it():
  ds = data.load_dataset("synthetic", num_test=10)
  batches = list(data.eval_batches(ds, 4))
  assert [b["mask"].tolist() for b in batches][-1] == [True, True, False, False]
  assert all(b["x"].shape == (4, 16) for b in batches)
  xs = np.concatenate([b["x"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(xs, ds.x_test)
  halves = [list(data.eval_batches(ds, 4, process_index=p, process_count=2)) for p in range(2)]
  for step, batch in enumerate(batches):
    union = np.concatenate([halves[p][step]["mask"] for p in range(2)])
    np.testing.assert_array_equal(union, batch["mask"])
  train = list(data.eval_batches(ds, 512, split="train"))
  assert len(train) == 1 and train[0]["mask"].all()
  with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
    next(data.eval_batches(ds, 4, split="val"))


# --- augmentation ------------------------------------------------------------------


def _manual_cifar_augment(x, seed):
  rng = np.random.default_rng(seed)
  n, h, w, _ = x.shape
  offsets = rng.integers(0, 9, size=(2, n))
  flips = rng.random(n) < 0.5
  out = np.empty_like(x)
  for i in range(n):
    padded = np.pad(x[i], ((4, 4), (4, 4), (0, 0)))
    crop = padded[offsets[0, i] : offsets[0, i] + h, offsets[1, i] : offsets[1, i] + w]
    out[i] = crop[:, ::-1] if flips[i] else crop
  return out, offsets, flips


def test_cifar_augment_matches_a_per_example_reference():
  x = np.random.default_rng(0).standard_normal((64, 32, 32, 3)).astype(np.float32)
  out = data.cifar_augment(x, np.random.default_rng(5))
  expected, offsets, flips = _manual_cifar_augment(x, 5)
  assert out.shape == x.shape and out.dtype == x.dtype
  np.testing.assert_array_equal(out, expected)
  # Both crops and flips actually happened in this draw.
  assert flips.any() and not flips.all() and (offsets != 4).any()
  assert not np.array_equal(out, x)


def test_augmentation_is_deterministic_per_seed():
  x = np.random.default_rng(1).standard_normal((16, 8, 8, 3)).astype(np.float32)
  a = data.cifar_augment(x, np.random.default_rng(0))
  np.testing.assert_array_equal(a, data.cifar_augment(x, np.random.default_rng(0)))
  assert not np.array_equal(a, data.cifar_augment(x, np.random.default_rng(1)))


def test_random_flip_and_crop_individually():
  x = np.arange(2 * 3 * 4 * 1, dtype=np.float32).reshape(2, 3, 4, 1)
  flips = np.random.default_rng(2).random(2) < 0.5
  out = data.random_flip_left_right(x, np.random.default_rng(2))
  for i in range(2):
    np.testing.assert_array_equal(out[i], x[i, :, ::-1] if flips[i] else x[i])
  np.testing.assert_array_equal(data.random_crop(x, np.random.default_rng(0), padding=0), x)
  cropped = data.random_crop(
    np.ones((50, 3, 3, 1), np.float32), np.random.default_rng(0), padding=2, fill=-7.0
  )
  assert set(np.unique(cropped)) == {-7.0, 1.0}
  with pytest.raises(
    ValueError, match=r"expects a numpy batch of images shaped \(N, H, W, C\); got \(3, 4\)"
  ):
    data.cifar_augment(np.zeros((3, 4)), np.random.default_rng(0))


def test_imagenet_transforms():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
  a = data.imagenet_train_transform(image, np.random.default_rng(3))
  assert a.shape == (224, 224, 3) and a.dtype == np.float32
  np.testing.assert_array_equal(a, data.imagenet_train_transform(image, np.random.default_rng(3)))
  assert not np.array_equal(a, data.imagenet_train_transform(image, np.random.default_rng(4)))
  # Eval: a constant image stays constant; its value is the normalised pixel.
  flat = np.full((300, 400, 3), 200, np.uint8)
  out = data.imagenet_eval_transform(flat)
  expected = (200 / 255 - np.asarray(data.IMAGENET_MEAN)) / np.asarray(data.IMAGENET_STD)
  np.testing.assert_allclose(out, np.broadcast_to(expected, (224, 224, 3)), rtol=1e-5)
  # Eval crops the centre: a marker there survives, one in the corner does not.
  marked = np.zeros((256, 512, 3), np.uint8)
  marked[128, 256] = 255
  marked[0, 0] = 255
  out = data.imagenet_eval_transform(marked)
  assert out.max() > 0 and out[0, 0, 0] == out.min()
  small = data.imagenet_train_transform(rng.integers(0, 256, (17, 47, 3), dtype=np.uint8), rng)
  assert small.shape == (224, 224, 3)
  with pytest.raises(ValueError, match="expected a uint8 image"):
    data.imagenet_eval_transform(np.zeros((8, 8, 3), np.float32))


def test_the_batch_schedule_is_one_definition_for_plan_and_iterator():
  # The phases of a growing-batch run: the closed-form offsets equal the sum
  # of the sizes before each step, and the iterator reads the same examples
  # from a BatchSchedule as from the equivalent step -> size function.
  schedule = data.BatchSchedule(((0, 4), (3, 8), (5, 12)))
  sizes = [schedule(s) for s in range(8)]
  assert sizes == [4, 4, 4, 8, 8, 12, 12, 12] and schedule.sizes == (4, 8, 12)
  for step in range(9):
    assert schedule.offset_at(step) == sum(sizes[:step])
    assert data.offset_at_step(schedule, step) == sum(sizes[:step])
  ds = _indexed_dataset(30)
  with (
    data.BatchIterator(ds, schedule, seed=3, start_step=4) as a,
    data.BatchIterator(ds, lambda s: sizes[s], seed=3, start_step=4) as b,
  ):
    for _ in range(3):
      np.testing.assert_array_equal(next(a)["x"], next(b)["x"])
  with pytest.raises(ValueError, match="phases must start at step 0"):
    data.BatchSchedule(((1, 4),))
  with pytest.raises(ValueError, match="in step order"):
    data.BatchSchedule(((0, 4), (5, 8), (3, 16)))
  # A phase of no step (two drops in one step) is skipped over.
  assert data.BatchSchedule(((0, 4), (2, 8), (2, 16))).offset_at(3) == 4 + 4 + 16
