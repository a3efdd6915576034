"""Datasets (mnist1d, synthetic, npz, tfds) and the seeded example-stream pipeline.

Typical use::

    from bigbatch_jax import data

    ds = data.load_dataset("mnist1d", num_samples=40000)
    with data.BatchIterator(ds, batch_size=256, seed=0) as batches:
        batch = next(batches)  # {"x": (256, 40) float32, "y": (256,) int32}
"""

from bigbatch_jax.data.arrays import ArrayDataset
from bigbatch_jax.data.augment import (
  IMAGENET_MEAN,
  IMAGENET_STD,
  cifar_augment,
  imagenet_eval_transform,
  imagenet_train_transform,
  normalize_image,
  random_crop,
  random_flip_left_right,
  resize_image,
)
from bigbatch_jax.data.gather import RandomAccessSource
from bigbatch_jax.data.pipeline import BatchIterator, PopulationBatches, eval_batches
from bigbatch_jax.data.run_data import (
  AUGMENTATIONS,
  InputPipeline,
  StreamedDataset,
  input_pipeline,
  load_data,
  split_source,
)
from bigbatch_jax.data.schedule import BatchSchedule, BatchSize, batch_size_at, offset_at_step
from bigbatch_jax.data.sources import (
  DATASET_SPECS,
  cache_dir,
  image_statistics,
  load_dataset,
  load_mnist1d,
  load_npz,
  make_synthetic,
  mnist1d_cache_path,
)
from bigbatch_jax.data.stream import shard_for_process, stream_indices
from bigbatch_jax.data.tfds_sources import (
  TFDS_DATASETS,
  TfdsStreamSource,
)
from bigbatch_jax.data.validation import evaluated_split, hold_out_validation, split_sizes

__all__ = [
  "AUGMENTATIONS",
  "DATASET_SPECS",
  "IMAGENET_MEAN",
  "IMAGENET_STD",
  "TFDS_DATASETS",
  "ArrayDataset",
  "BatchIterator",
  "BatchSchedule",
  "BatchSize",
  "InputPipeline",
  "PopulationBatches",
  "RandomAccessSource",
  "StreamedDataset",
  "TfdsStreamSource",
  "batch_size_at",
  "cache_dir",
  "cifar_augment",
  "eval_batches",
  "evaluated_split",
  "hold_out_validation",
  "image_statistics",
  "imagenet_eval_transform",
  "imagenet_train_transform",
  "input_pipeline",
  "load_data",
  "load_dataset",
  "load_mnist1d",
  "load_npz",
  "make_synthetic",
  "mnist1d_cache_path",
  "normalize_image",
  "offset_at_step",
  "random_crop",
  "random_flip_left_right",
  "resize_image",
  "shard_for_process",
  "split_sizes",
  "split_source",
  "stream_indices",
]
