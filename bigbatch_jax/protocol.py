"""The protocols: "clean", the bigBatch reference code's, and the selection fitted to the paper.

Reading the reference code (github.com/eladhoffer/bigBatch, commit 0c69f28)
against the paper finds what the paper does not describe:

1. The momentum buffer restarts every epoch: ``adjust_optimizer`` replays the
   regime from epoch 0, whose entry names the optimizer, so a new
   ``torch.optim.SGD`` with an empty buffer is built each epoch.
2. MNIST is augmented: pad 2 with black, random 28x28 crop, horizontal flip
   (``preprocess.get_transform('mnist', augment=True)``).
3. Batch-norm scales start U(0, 1), PyTorch's default before 1.0.
4. Each Table 1 column runs its own script at its own batch size and flags
   (:mod:`bigbatch_jax.reference_columns`): ``main_normal.py`` scales the lr by
   sqrt(B/256) (also SB's, ``--lr_bb_fix`` being its default) and stretches the
   regime by ceil(B/256); ``main_gbn.py`` by sqrt(B/mini) and ceil(B/mini).
5. The last partial batch of every epoch is kept (PyTorch's DataLoader with
   ``drop_last=False``): on MNIST at B=4096, 60000 = 14 x 4096 + 2656, so an
   epoch is 15 updates.
6. PyTorch's batch norm keeps the unbiased variance, n/(n-1) times the batch's,
   in its running average (``GhostBatchNorm(running_variance="unbiased")``).
7. MNIST is normalised with ``Normalize(0.5, 0.5)`` whatever the data's own
   statistics (``preprocess.get_transform('mnist')``); tfds:mnist always is,
   an npz of MNIST images only under this item.

``protocol="reference"`` is all of them: everything the reference code does,
per column. ``protocol="reference-fitted"`` is the earlier selection, fitted to
the paper's numbers rather than read from the scripts: items 1 and 2 and
``main_normal_lr`` (sqrt(B/256) and ceil(B/256) on every large-batch column at
the config's batch sizes, including the Ghost BN columns that only
``main_gbn.py`` runs and the LB/+LR columns the scripts run at half the large
batch), which matched Hoffer et al.'s MNIST numbers on one or two seeds.
Where the source is ambiguous the reference protocol takes what the script
does; each item is also a config key of its own (None: the protocol's
default), so the alternatives are one switch away.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import ml_collections
import numpy as np

from bigbatch_jax.reference_columns import MAIN_NORMAL_BATCH_SIZE, ScriptColumn, script_column

PROTOCOLS = ("clean", "reference", "reference-fitted")

# config key -> (clean, reference, reference-fitted) default
_ARTEFACT_DEFAULTS = {
  "momentum_restart": (False, True, True),
  "reference_mnist_augment": (False, True, True),
  "bn_scale_uniform": (False, True, False),
  "script_columns": (False, True, False),
  "main_normal_lr": (False, False, True),
  "partial_last_batch": (False, True, False),
  "unbiased_running_variance": (False, True, False),
  "reference_mnist_normalize": (False, True, False),
}
ARTEFACT_KEYS = tuple(_ARTEFACT_DEFAULTS)


def protocol_items(name: str) -> tuple[str, ...]:
  """The artefact keys protocol ``name`` switches on."""
  if name not in PROTOCOLS:
    raise ValueError(f"protocol {name!r}; valid: {PROTOCOLS}")
  index = PROTOCOLS.index(name)
  return tuple(key for key, defaults in _ARTEFACT_DEFAULTS.items() if defaults[index])


@dataclasses.dataclass(frozen=True)
class Protocol:
  """The artefacts of the reference code a run reproduces.

  Attributes:
    name: one of ``PROTOCOLS``.
    momentum_restart: zero the SGD momentum at each epoch's first update.
    reference_mnist_augment: pad 2 with black, crop and flip image data; with
      the reference protocols only where the data are in-memory images
      (``mnist_augment_explicit`` says whether the config asked for it).
    bn_scale_uniform: batch-norm scales start U(0, 1).
    script_columns: each column's batch size, ghost size, lr rule and regime
      stretch are its script's (:func:`bigbatch_jax.reference_columns.script_column`).
    main_normal_lr: lr scaled by (B / 256)**p, regime stretched by ceil(B / 256),
      at the config's batch sizes (the fitted selection).
    partial_last_batch: every epoch is ceil(N / B) updates, the last of N mod B
      examples (``bigbatch_jax.data.schedule.BatchSchedule``'s ``epoch_size``).
    unbiased_running_variance: batch norm's running variance is PyTorch's
      unbiased one.
    reference_mnist_normalize: in-memory one-channel uint8 images are
      normalised with mean 0.5 and std 0.5.
    mnist_augment_explicit: ``reference_mnist_augment`` was set in the config.
    momentum_restart_explicit: ``momentum_restart`` was set in the config (the
      reference protocols skip runs without SGD momentum, e.g. LAMB; asking
      for it explicitly there is an error).
    mnist_normalize_explicit: ``reference_mnist_normalize`` was set in the config.
    script_columns_explicit: ``script_columns`` was set in the config (the
      reference protocol leaves variants no script runs, e.g. LAMB or a
      growing batch, to the config's own rule; asking for it there is an error).
    partial_last_batch_explicit: ``partial_last_batch`` was set in the config
      (the reference protocol keeps a growing batch's epochs whole; asking for
      both is an error).
  """

  name: str
  momentum_restart: bool
  reference_mnist_augment: bool
  bn_scale_uniform: bool
  main_normal_lr: bool
  partial_last_batch: bool = False
  script_columns: bool = False
  unbiased_running_variance: bool = False
  reference_mnist_normalize: bool = False
  mnist_augment_explicit: bool = False
  momentum_restart_explicit: bool = False
  mnist_normalize_explicit: bool = False
  script_columns_explicit: bool = False
  partial_last_batch_explicit: bool = False

  def lr_base_batch_size(self, base_batch_size: int) -> int:
    """The batch size the learning-rate rule divides by: B_S, or 256 (main_normal.py)."""
    return MAIN_NORMAL_BATCH_SIZE if self.main_normal_lr else base_batch_size

  def regime_stretch(self, batch_size: int, base_batch_size: int) -> float:
    """The factor regime adaptation multiplies epochs by: B / B_S, or ceil(B / 256)."""
    if self.main_normal_lr:
      return float(math.ceil(batch_size / MAIN_NORMAL_BATCH_SIZE))
    return batch_size / base_batch_size


def resolve_protocol(config: ml_collections.ConfigDict) -> Protocol:
  """The run's protocol: ``config.protocol``'s defaults, overridden by set artefact keys.

  Args:
    config: a run config with ``protocol`` and the keys of each artefact.

  Returns:
    A :class:`Protocol`.
  """
  name = config.protocol
  if name not in PROTOCOLS:
    raise ValueError(f"config.protocol={name!r}; valid: {PROTOCOLS}")
  index = PROTOCOLS.index(name)
  values = {}
  for key, defaults in _ARTEFACT_DEFAULTS.items():
    value = config[key]
    if value is not None and not isinstance(value, bool):
      raise ValueError(f"config.{key} must be True, False or None (the protocol's), got {value!r}")
    values[key] = defaults[index] if value is None else value
  if values["script_columns"] and values["main_normal_lr"]:
    raise ValueError(
      "config.script_columns (each column's script, batch size and lr rule) and "
      "config.main_normal_lr (main_normal.py's rule on every column) are two lr rules; "
      f"protocol {name!r} with these keys sets both: set one of them to False"
    )
  return Protocol(
    name=name,
    mnist_augment_explicit=config.reference_mnist_augment is not None,
    momentum_restart_explicit=config.momentum_restart is not None,
    mnist_normalize_explicit=config.reference_mnist_normalize is not None,
    script_columns_explicit=config.script_columns is not None,
    partial_last_batch_explicit=config.partial_last_batch is not None,
    **values,
  )


def column_of(
  protocol: Protocol, config: ml_collections.ConfigDict, variant
) -> ScriptColumn | None:
  """The run's column as its script runs it (item 4), or None without ``script_columns``.

  Args:
    protocol: the run's protocol.
    config: the run config (``model``, ``base_batch_size``, ``large_batch_size``,
      ``ghost_batch_size``, ``regime.epochs``).
    variant: the parsed variant (``bigbatch_jax.training.variants.Variant``).

  Returns:
    The :class:`~bigbatch_jax.reference_columns.ScriptColumn` at the config's
    sizes, or None (also, by the protocol's default, for a variant no script
    runs: a growing batch, LARS or LAMB).
  """
  if not protocol.script_columns:
    return None
  if variant.grow_batch or variant.optimizer != "sgd":
    if not protocol.script_columns_explicit:
      return None  # the reference protocol's default: no script runs this variant
    raise ValueError(
      f"config.script_columns runs each column with a bigBatch script (momentum SGD at one "
      f"batch size); variant {variant.name!r} is not one of them: set "
      "config.script_columns=False"
    )
  return script_column(
    config.model,
    variant.name,
    base_batch_size=config.base_batch_size,
    large_batch_size=config.large_batch_size,
    epochs=config.regime.epochs,
    large_batch=variant.large_batch,
    ghost_batch_norm=variant.ghost_batch_norm,
    lr_scaled=variant.lr_rule != "none",
    regime_adaptation=variant.regime_adaptation,
    ghost_batch_size=config.ghost_batch_size,
  )


def reference_mnist_augmentation(protocol: Protocol, dataset, augment: str):
  """The reference MNIST augmentation for ``dataset``, or None where it does not apply.

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
  # Imported here: bigbatch_jax.data's run_data imports this module.
  from bigbatch_jax.data import augment as augment_lib

  if not protocol.reference_mnist_augment:
    return None
  mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
  shape = tuple(getattr(dataset, "input_shape", ()))
  applies = mean is not None and std is not None and len(shape) == 3
  if not applies:
    if protocol.mnist_augment_explicit:
      raise ValueError(
        f"config.reference_mnist_augment pads images with black; {dataset.name} has examples "
        f"of shape {shape} without a pixel normalisation (use in-memory image data such as "
        "tfds:mnist)"
      )
    return None
  if augment != "none":
    raise ValueError(
      f"config.augment={augment!r} and the reference MNIST augmentation both augment the "
      "training batch; set config.augment='none' or config.reference_mnist_augment=False"
    )
  fill = augment_lib.black_pixel(mean, std)
  return functools.partial(augment_lib.reference_mnist_augment, fill=fill)


def reference_mnist_normalization(protocol: Protocol, dataset):
  """``dataset`` normalised with mean 0.5 and std 0.5 where item 7 applies, else ``dataset``.

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
  if not protocol.reference_mnist_normalize:
    return dataset
  mean = getattr(dataset, "mean", None)
  shape = tuple(getattr(dataset, "input_shape", ()))
  grey = len(shape) == 2 or (len(shape) == 3 and shape[-1] == 1)
  if mean is None or not grey or not dataclasses.is_dataclass(dataset):
    if protocol.mnist_normalize_explicit:
      raise ValueError(
        f"config.reference_mnist_normalize normalises one-channel uint8 images held in memory "
        f"(MNIST) with mean 0.5 and std 0.5; {dataset.name} has examples of shape {shape}"
        f"{'' if mean is not None else ' without a pixel normalisation'}: set it to False"
      )
    return dataset
  half = np.full_like(np.asarray(mean, np.float32), 0.5)
  return dataclasses.replace(dataset, mean=half, std=half)
