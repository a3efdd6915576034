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

The items are data: :data:`PROTOCOL_ITEMS`, one :class:`ProtocolItem` each
(key, what it changes, defaults per protocol, where it applies).
:func:`resolve_protocol` reads them with the config once per run into a
:class:`Protocol`, which the plan carries; ``Protocol.applies(key, run)``
answers whether an item is in effect for a run (:class:`RunKind`: its
variant, its data). The data side of items 2 and 7 is
:mod:`bigbatch_jax.data.reference_mnist`, which imports this module.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import ml_collections

from bigbatch_jax.reference_columns import MAIN_NORMAL_BATCH_SIZE, ScriptColumn, script_column

PROTOCOLS = ("clean", "reference", "reference-fitted")


@dataclasses.dataclass(frozen=True)
class RunKind:
  """What a run is, as far as where a protocol item applies: its variant and its data.

  ``variant`` and ``data`` also say which half is known: the plan asks about
  the variant before any data are read, the data path about the data; an item
  asked about a half that is None is a programming error.

  Attributes:
    variant: the variant's name, or None when the question is not about it.
    optimizer: the variant's optimizer ("sgd", "lars" or "lamb").
    momentum: the regime's momentum.
    grow_batch: the variant grows the batch (Smith et al.).
    ghost_noise: the variant normalizes with Ghost Noise Injection (no
      bigBatch script runs it).
    data: the dataset's name, or None when the question is not about it.
    input_shape: one example's shape.
    pixel_mean: the data carry a pixel mean (uint8 images).
    pixel_std: the data carry a pixel standard deviation.
    in_memory: the dataset is a dataclass whose normalisation can be replaced.
  """

  variant: str | None = None
  optimizer: str = "sgd"
  momentum: float = 0.0
  grow_batch: bool = False
  ghost_noise: bool = False
  data: str | None = None
  input_shape: tuple[int, ...] = ()
  pixel_mean: bool = False
  pixel_std: bool = False
  in_memory: bool = False

  @classmethod
  def of(cls, variant=None, momentum: float = 0.0, dataset=None) -> RunKind:
    """The kind of a run of ``variant`` (a parsed ``Variant``) at ``momentum`` on ``dataset``."""
    parts = {}
    if variant is not None:
      parts.update(
        variant=variant.name,
        optimizer=variant.optimizer,
        momentum=momentum,
        grow_batch=variant.grow_batch,
        ghost_noise=variant.ghost_noise,
      )
    if dataset is not None:
      parts.update(
        data=dataset.name,
        input_shape=tuple(getattr(dataset, "input_shape", ())),
        pixel_mean=getattr(dataset, "mean", None) is not None,
        pixel_std=getattr(dataset, "std", None) is not None,
        in_memory=dataclasses.is_dataclass(dataset),
      )
    return cls(**parts)


def _without_momentum(run: RunKind) -> str | None:
  if run.optimizer == "lamb" or not run.momentum:
    return f"this run has none (optimizer {run.optimizer!r}, momentum {run.momentum})"
  return None


def _not_a_script_variant(run: RunKind) -> str | None:
  if run.grow_batch or run.ghost_noise or run.optimizer != "sgd":
    return f"variant {run.variant!r} is not one of them"
  return None


def _growing_batch(run: RunKind) -> str | None:
  if run.grow_batch:
    return f"variant {run.variant!r} grows the batch (not supported together)"
  return None


def _ghost_noise(run: RunKind) -> str | None:
  if run.ghost_noise:
    return f"variant {run.variant!r} normalizes with Ghost Noise Injection (biased variance)"
  return None


def _not_images(run: RunKind) -> str | None:
  if run.pixel_mean and run.pixel_std and len(run.input_shape) == 3:
    return None
  return (
    f"{run.data} has examples of shape {run.input_shape}: not in-memory images with a pixel "
    "normalisation (such as tfds:mnist)"
  )


def _not_grey_images(run: RunKind) -> str | None:
  shape = run.input_shape
  grey = len(shape) == 2 or (len(shape) == 3 and shape[-1] == 1)
  if run.pixel_mean and grey and run.in_memory:
    return None
  missing = "" if run.pixel_mean else " without a pixel normalisation"
  return f"{run.data} has examples of shape {shape}{missing}: not one-channel in-memory images"


@dataclasses.dataclass(frozen=True)
class ProtocolItem:
  """One artefact of the reference code: its config key, its defaults and where it applies.

  Attributes:
    key: the config key (None there: the protocol's default) and the
      :class:`Protocol` field.
    changes: what it changes, in words (the start of its error messages).
    defaults: on or off under each of ``PROTOCOLS``, in that order.
    where: where it applies, in words.
    reads: the half of :class:`RunKind` its rule reads ("variant" or "data"),
      or "" when it applies to every run.
    not_applicable: ``RunKind -> reason or None``: why it does not apply.
  """

  key: str
  changes: str
  defaults: tuple[bool, bool, bool]
  where: str
  reads: str = ""
  not_applicable: Callable[[RunKind], str | None] | None = None

  def default(self, protocol: str) -> bool:
    return self.defaults[PROTOCOLS.index(protocol)]

  def reason_not_applied(self, run: RunKind) -> str | None:
    """Why the item does not apply to ``run``, or None when it does."""
    if self.not_applicable is None:
      return None
    if getattr(run, self.reads) is None:
      raise ValueError(
        f"protocol item {self.key!r} applies by the run's {self.reads}, which {run} lacks"
      )
    return self.not_applicable(run)


# The items in their numbered order (the module docstring), main_normal_lr after item 4.
PROTOCOL_ITEMS = (
  ProtocolItem(
    "momentum_restart",
    "zeroes the SGD (or LARS) momentum every epoch",
    (False, True, True),
    "runs with SGD or LARS momentum",
    "variant",
    _without_momentum,
  ),
  ProtocolItem(
    "reference_mnist_augment",
    "pads images with black, crops and flips them",
    (False, True, True),
    "in-memory images with a pixel normalisation",
    "data",
    _not_images,
  ),
  ProtocolItem(
    "bn_scale_uniform", "starts batch-norm scales U(0, 1)", (False, True, False), "batch norm"
  ),
  ProtocolItem(
    "script_columns",
    "runs each column with a bigBatch script (momentum SGD at one batch size)",
    (False, True, False),
    "momentum-SGD variants at one batch size (no LARS, LAMB or growing batch)",
    "variant",
    _not_a_script_variant,
  ),
  ProtocolItem(
    "main_normal_lr",
    "scales the lr by (B / 256)**p and stretches the regime by ceil(B / 256)",
    (False, False, True),
    "every run (it changes those whose lr is scaled or regime adapted)",
  ),
  ProtocolItem(
    "partial_last_batch",
    "keeps each epoch's last partial batch at one batch size",
    (False, True, False),
    "variants at one batch size (no growing batch)",
    "variant",
    _growing_batch,
  ),
  ProtocolItem(
    "unbiased_running_variance",
    "keeps PyTorch's unbiased running variance in batch norm",
    (False, True, False),
    "batch norm, Ghost BN (not Ghost Noise Injection, which keeps flax's biased one)",
    "variant",
    _ghost_noise,
  ),
  ProtocolItem(
    "reference_mnist_normalize",
    "normalises one-channel uint8 images held in memory (MNIST) with mean 0.5 and std 0.5",
    (False, True, False),
    "one-channel in-memory images with a pixel normalisation",
    "data",
    _not_grey_images,
  ),
)
ITEMS = {item.key: item for item in PROTOCOL_ITEMS}
ARTEFACT_KEYS = tuple(ITEMS)


def protocol_items(name: str) -> tuple[str, ...]:
  """The artefact keys protocol ``name`` switches on."""
  if name not in PROTOCOLS:
    raise ValueError(f"protocol {name!r}; valid: {PROTOCOLS}")
  return tuple(item.key for item in PROTOCOL_ITEMS if item.default(name))


@dataclasses.dataclass(frozen=True)
class Protocol:
  """The artefacts of the reference code a run reproduces, resolved once per run.

  Each artefact field is on or off; :meth:`applies` says whether it is in
  effect for a given run (:data:`PROTOCOL_ITEMS` says where each applies).

  Attributes:
    name: one of ``PROTOCOLS``.
    momentum_restart: zero the SGD momentum at each epoch's first update.
    reference_mnist_augment: pad 2 with black, crop and flip image data.
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
    explicit: the artefact keys set in the config (not None). A protocol's
      default skips runs where its item does not apply; an item asked for
      explicitly there is an error.
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
  explicit: frozenset[str] = frozenset()

  def applies(self, key: str, run: RunKind) -> bool:
    """Whether item ``key`` is in effect for ``run``: on, and where it applies.

    Raises:
      ValueError: the item was set explicitly and does not apply to ``run``.
    """
    if key not in ITEMS:
      raise ValueError(f"no protocol item {key!r}; valid: {', '.join(ARTEFACT_KEYS)}")
    if not getattr(self, key):
      return False
    reason = ITEMS[key].reason_not_applied(run)
    if reason is None:
      return True
    if key in self.explicit:
      raise ValueError(f"config.{key} {ITEMS[key].changes}; {reason}: set config.{key}=False")
    return False  # the protocol's default: the item skips this run

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

  A run resolves it once (``make_plan`` puts it on the plan; the data path
  receives it).

  Args:
    config: a run config with ``protocol`` and the keys of each artefact.

  Returns:
    A :class:`Protocol`.
  """
  name = config.protocol
  if name not in PROTOCOLS:
    raise ValueError(f"config.protocol={name!r}; valid: {PROTOCOLS}")
  values = {}
  for item in PROTOCOL_ITEMS:
    value = config[item.key]
    if value is not None and not isinstance(value, bool):
      raise ValueError(
        f"config.{item.key} must be True, False or None (the protocol's), got {value!r}"
      )
    values[item.key] = item.default(name) if value is None else value
  if values["script_columns"] and values["main_normal_lr"]:
    raise ValueError(
      "config.script_columns (each column's script, batch size and lr rule) and "
      "config.main_normal_lr (main_normal.py's rule on every column) are two lr rules; "
      f"protocol {name!r} with these keys sets both: set one of them to False"
    )
  explicit = frozenset(key for key in ARTEFACT_KEYS if config[key] is not None)
  return Protocol(name=name, explicit=explicit, **values)


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
  if not protocol.applies("script_columns", RunKind.of(variant)):
    return None
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
