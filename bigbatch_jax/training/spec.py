"""``resolve``: a run's config read once, into a frozen, typed :class:`RunSpec`.

Everything below :func:`resolve` (the data path, the model and norm layers,
the optimizer, the loop's events and limits, the outputs) reads the spec's
parts, never a ``ConfigDict``: a test scans the library's modules for it.
Each key is validated here, once, with an error that names the key, the
value and what is valid. The parts group the keys by who reads them:

- :class:`~bigbatch_jax.data.run_data.DataSpec`: the dataset, its split and its
  preprocessing (the data path);
- :class:`ModelSpec`: the architecture and its batch-norm settings (the set-up);
- :class:`~bigbatch_jax.training.run_plan.RunPlan`: the sizes, the regime and
  every hyperparameter the optimizer and the schedule derive (``make_plan``);
- :class:`EventSpec`: when the loop logs, evaluates, checkpoints and stops;
- :class:`RunSettings`: seeds, devices, evaluation and the non-finite policies.

The data are loaded before the plan can be made (the plan needs the number of
training examples), so :func:`data_spec` is also callable alone.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import ml_collections

from bigbatch_jax.data.run_data import AUGMENTATIONS, DataSpec, streamed_tfds_name
from bigbatch_jax.data.run_data import load_data as load_data_of_spec
from bigbatch_jax.data.validation import split_sizes
from bigbatch_jax.ghost_batches import GHOST_VARIANCES, STATS_UPDATES
from bigbatch_jax.ghost_noise import GHOST_DRAWS
from bigbatch_jax.protocol import Protocol, resolve_protocol
from bigbatch_jax.training.plan import make_plan
from bigbatch_jax.training.population_grid import Population
from bigbatch_jax.training.population_spec import member_seeds, population_of
from bigbatch_jax.training.run_limits import check_limit_keys
from bigbatch_jax.training.run_plan import RunPlan

NONFINITE_POLICIES = ("stop", "skip")
COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The architecture and its normalization layers (``training.setup``)."""

  model: str
  model_options: tuple[tuple[str, Any], ...]  # the model's keyword arguments, sorted
  compute_dtype: str
  bn_momentum: float
  bn_epsilon: float
  ghost_stats_update: str
  ghost_variance: str
  ghost_draws: str


@dataclasses.dataclass(frozen=True)
class EventSpec:
  """When the loop logs, evaluates, checkpoints and stops (``training.events``)."""

  log_every_steps: int
  eval_every_epochs: float
  checkpoint_every_steps: int | None
  stop_after_steps: int | None
  steps_per_call: int


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """Seeds, devices, evaluation, outputs and the non-finite policies of a run."""

  seed: int
  num_devices: int | None
  member_devices: int  # groups of devices a population's members split over
  nonfinite_policy: str
  nonfinite_max_skip_fraction: float
  nonfinite_max_consecutive_skips: int
  divergence_loss_factor: float | None
  eval_batch_size: int
  eval_on_train: bool
  max_checkpoints_to_keep: int
  prefetch_batches: int
  progress_bar: bool
  distributed: bool  # jax.distributed over several processes
  coordinator_address: str | None  # None: from the cluster environment
  num_processes: int | None
  process_id: int | None
  distributed_timeout_s: float


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """A run, resolved: every part below the config that the library reads."""

  data: DataSpec
  model: ModelSpec
  plan: RunPlan
  events: EventSpec
  settings: RunSettings
  population: Population | None  # None: one run of settings.seed


def record(spec: RunSpec) -> dict[str, Any]:
  """The spec as JSON-ready data: what ``spec.json`` in a workdir holds (resume compares it)."""

  def plain(value):
    if isinstance(value, dict):
      return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
      return [plain(v) for v in value]
    if isinstance(value, frozenset | set):
      return sorted(value)
    return value

  return plain(dataclasses.asdict(spec))


def _int(config, key: str, low: int, allow_none: bool = False) -> int | None:
  value = config[key]
  if value is None and allow_none:
    return None
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
    none = " or None" if allow_none else ""
    raise ValueError(f"config.{key}={value!r}; valid: an integer >= {low}{none}")
  return int(value)


def _bool(config, key: str) -> bool:
  value = config[key]
  if not isinstance(value, bool):
    raise ValueError(f"config.{key}={value!r}; valid: True or False")
  return value


def _choice(config, key: str, valid: tuple[str, ...]) -> str:
  value = config[key]
  if value not in valid:
    raise ValueError(f"config.{key}={value!r}; valid: {valid}")
  return value


def _augment(kind) -> str:
  if kind not in AUGMENTATIONS:
    raise ValueError(f"config.augment={kind!r}; valid: {', '.join(AUGMENTATIONS)}")
  return kind


def data_spec(config: ml_collections.ConfigDict) -> DataSpec:
  """The config's :class:`DataSpec`, validated (what loading the data needs)."""
  fraction = config.validation_fraction
  split_sizes(1000, fraction)  # checks the fraction before any loading
  if not isinstance(config.dataset, str):
    raise ValueError(f"config.dataset={config.dataset!r}; valid: a dataset name, e.g. 'mnist1d'")
  if streamed_tfds_name(config.dataset) is not None and fraction:
    raise ValueError(
      f"config.validation_fraction={fraction} needs an in-memory dataset; {config.dataset} is "
      "streamed: hold out a validation split with config.tfds_train_split/tfds_eval_split "
      "(e.g. 'train[:90%]' and 'train[90%:]')"
    )
  return DataSpec(
    dataset=config.dataset,
    data_seed=_int(config, "data_seed", 0, allow_none=True),
    mnist1d_num_samples=_int(config, "mnist1d_num_samples", 1),
    npz_num_classes=_int(config, "npz_num_classes", 1, allow_none=True),
    tfds_data_dir=config.tfds_data_dir,
    tfds_download=_bool(config, "tfds_download"),
    tfds_train_split=config.tfds_train_split,
    tfds_eval_split=config.tfds_eval_split,
    image_size=_int(config, "image_size", 1),
    augment=_augment(config.augment),
    validation_fraction=float(fraction),
    validation_seed=_int(config, "validation_seed", 0),
  )


def model_spec(config: ml_collections.ConfigDict) -> ModelSpec:
  """The config's :class:`ModelSpec`, validated."""
  return ModelSpec(
    model=config.model,
    model_options=tuple(sorted(dict(config.model_options).items())),
    compute_dtype=_choice(config, "compute_dtype", COMPUTE_DTYPES),
    bn_momentum=float(config.bn_momentum),
    bn_epsilon=float(config.bn_epsilon),
    ghost_stats_update=_choice(config, "ghost_stats_update", STATS_UPDATES),
    ghost_variance=_choice(config, "ghost_variance", GHOST_VARIANCES),
    ghost_draws=_choice(config, "ghost_draws", GHOST_DRAWS),
  )


def event_spec(config: ml_collections.ConfigDict) -> EventSpec:
  """The config's :class:`EventSpec`, validated."""
  period = config.eval_every_epochs
  if isinstance(period, bool) or not isinstance(period, numbers.Real) or not period > 0:
    raise ValueError(f"config.eval_every_epochs={period!r}; valid: a number of epochs > 0")
  return EventSpec(
    log_every_steps=_int(config, "log_every_steps", 1),
    eval_every_epochs=float(period),
    checkpoint_every_steps=_int(config, "checkpoint_every_steps", 0, allow_none=True),
    stop_after_steps=_int(config, "stop_after_steps", 0, allow_none=True),
    steps_per_call=_int(config, "steps_per_call", 1),
  )


def run_settings(config: ml_collections.ConfigDict) -> RunSettings:
  """The config's :class:`RunSettings`, validated."""
  factor = config.divergence_loss_factor
  check_limit_keys(
    factor, config.nonfinite_max_skip_fraction, config.nonfinite_max_consecutive_skips
  )
  timeout = config.distributed_timeout_s
  if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout > 0:
    raise ValueError(f"config.distributed_timeout_s={timeout!r}; valid: seconds > 0")
  return RunSettings(
    seed=_int(config, "seed", 0),
    num_devices=_int(config, "num_devices", 1, allow_none=True),
    member_devices=_int(config, "member_devices", 1),
    nonfinite_policy=_choice(config, "nonfinite_policy", NONFINITE_POLICIES),
    nonfinite_max_skip_fraction=float(config.nonfinite_max_skip_fraction),
    nonfinite_max_consecutive_skips=config.nonfinite_max_consecutive_skips,
    divergence_loss_factor=None if factor is None else float(factor),
    eval_batch_size=_int(config, "eval_batch_size", 1),
    eval_on_train=_bool(config, "eval_on_train"),
    max_checkpoints_to_keep=_int(config, "max_checkpoints_to_keep", 1),
    prefetch_batches=_int(config, "prefetch_batches", 0),
    progress_bar=_bool(config, "progress_bar"),
    distributed=_bool(config, "distributed"),
    coordinator_address=config.coordinator_address,
    num_processes=_int(config, "num_processes", 1, allow_none=True),
    process_id=_int(config, "process_id", 0, allow_none=True),
    distributed_timeout_s=float(timeout),
  )


def resolve(
  config: ml_collections.ConfigDict,
  *,
  num_train: int,
  num_devices: int,
  process_count: int = 1,
  protocol: Protocol | None = None,
) -> RunSpec:
  """The run ``config`` describes, validated and derived once.

  Args:
    config: a complete run config (``bigbatch_jax.configs``).
    num_train: the number of training examples (of the loaded data).
    num_devices: devices over which one batch is split (all processes; with
      ``member_devices`` > 1, one group's: ``parallel.data_devices``).
    process_count: JAX processes; each loads its share of every batch.
    protocol: the run's protocol when already resolved (the data's loading
      needs it first); None resolves it here.

  Raises:
    ValueError: naming the first invalid key, its value and what is valid.
  """
  protocol = resolve_protocol(config) if protocol is None else protocol
  settings = run_settings(config)
  plan = make_plan(config, num_train, num_devices, process_count, protocol)
  if settings.eval_batch_size % num_devices:
    raise ValueError(
      f"config.eval_batch_size={settings.eval_batch_size} is not divisible by {num_devices} devices"
    )
  population = population_of(config, plan, member_seeds(config))
  _check_member_devices(settings.member_devices, population)
  return RunSpec(
    data=data_spec(config),
    model=model_spec(config),
    plan=plan,
    events=event_spec(config),
    settings=settings,
    population=population,
  )


def _check_member_devices(member_devices: int, population: Population | None) -> None:
  """Members split evenly over ``member_devices`` groups of devices, or not at all."""
  if member_devices == 1:
    return
  if population is None or population.size == 1:
    raise ValueError(
      f"config.member_devices={member_devices} splits a population's members over devices, "
      "but this run trains one seed; use member_devices=1 or a tuple of config.seeds"
    )
  if population.size % member_devices:
    raise ValueError(
      f"config.member_devices={member_devices} does not divide the population's "
      f"{population.size} members; valid: a divisor of {population.size}"
    )


def load_data(config: ml_collections.ConfigDict):
  """The config's dataset, outside a run (a run loads it with its resolved protocol)."""
  return load_data_of_spec(data_spec(config), resolve_protocol(config))
