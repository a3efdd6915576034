"""``train_and_evaluate``: the whole run, from a config to metrics, plots and checkpoints."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bigbatch_jax import data as data_lib
from bigbatch_jax import models
from bigbatch_jax.training import parallel
from bigbatch_jax.training import plan as plan_lib
from bigbatch_jax.training import step as step_lib
from bigbatch_jax.training.checkpoint import Checkpointer
from bigbatch_jax.training.metrics import MetricsLog, fit_log_growth, plot_run
from bigbatch_jax.training.state import TrainState, create_train_state

log = logging.getLogger(__name__)

# Config keys that may change between a run and its resumption (and that
# differ between the processes of one multi-host run).
RESUMABLE_KEYS = frozenset(
  {
    "progress_bar",
    "log_every_steps",
    "allow_config_change",
    "stop_after_steps",
    "process_id",
    "coordinator_address",
    "distributed_timeout_s",
    # Where the data lives and how far ahead it is read change no result.
    "tfds_data_dir",
    "tfds_download",
    "prefetch_batches",
  }
)


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """jax.distributed.initialize() for multi-host runs, with timeouts so a dead peer fails fast.

  On CPU the cross-process collectives use gloo. Unset coordinator address,
  process count and id come from the cluster environment.
  """
  if not config.distributed or jax.distributed.is_initialized():
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used by CPU devices only
  timeout = int(config.distributed_timeout_s)
  jax.distributed.initialize(
    coordinator_address=config.coordinator_address,
    num_processes=config.num_processes,
    process_id=config.process_id,
    initialization_timeout=timeout,
    heartbeat_timeout_seconds=timeout,
  )


def wait_for_all_processes(name: str, timeout_s: int) -> None:
  """A barrier on jax.distributed's coordination service, which has no device collective.

  The first cross-process collective (orbax's directory sync) sets up gloo's
  context with a fixed 30 s wait for the peers; a process still loading data
  or compiling on a loaded machine can miss it. Meeting here first, under the
  run's own ``distributed_timeout_s``, puts every process at that collective
  together.
  """
  if jax.process_count() == 1:
    return
  from bigbatch_jax._compat import distributed_client

  # A barrier id is spent once passed; every process meets the barriers in the
  # same order, so a call count makes the ids of repeated runs agree and differ.
  calls = next(_barrier_calls)
  distributed_client().wait_at_barrier(f"{name}_{calls}", timeout_in_ms=int(timeout_s) * 1000)


_barrier_calls = itertools.count()


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
  train: data_lib.RandomAccessSource
  test: data_lib.RandomAccessSource
  num_classes: int
  input_shape: tuple[int, ...]

  @property
  def num_train(self) -> int:
    return len(self.train)

  @property
  def num_test(self) -> int:
    return len(self.test)


AUGMENTATIONS = ("none", "cifar", "imagenet")


def _streamed_tfds_name(spec: str) -> str | None:
  """The tfds name when ``spec`` is a streamed tfds dataset ("tfds:imagenet2012"), else None."""
  from bigbatch_jax.data.tfds_sources import TFDS_STREAMED

  name = spec[len("tfds:") :] if spec.startswith("tfds:") else None
  return name if name in TFDS_STREAMED else None


def load_data(config: ml_collections.ConfigDict) -> data_lib.ArrayDataset | StreamedDataset:
  """The config's dataset: in memory, or streamed for tfds:imagenet2012."""
  streamed = _streamed_tfds_name(config.dataset)
  if streamed is not None:
    # ImageNet does not fit in memory: open the splits, decode per example.
    splits = [
      data_lib.TfdsStreamSource(
        streamed, split, data_dir=config.tfds_data_dir, download=config.tfds_download
      )
      for split in (config.tfds_train_split, config.tfds_eval_split)
    ]
    size = config.image_size
    return StreamedDataset(config.dataset, *splits, splits[0].num_classes, (size, size, 3))
  options = {}
  if config.dataset == "mnist1d":
    options["num_samples"] = config.mnist1d_num_samples
  if config.dataset.startswith("tfds:"):
    if config.tfds_data_dir is not None:
      options["data_dir"] = config.tfds_data_dir
    options["download"] = config.tfds_download
    if config.dataset == "tfds:caltech101":
      options["image_size"] = config.image_size
  return data_lib.load_dataset(config.dataset, seed=config.data_seed, **options)


@dataclasses.dataclass(frozen=True)
class InputPipeline:
  """The config's preprocessing: a batch augmentation and per-example transforms."""

  augment: Any  # (x, rng) -> x on the float32 training batch, or None
  train_transform: Any  # (example, rng) -> x for each training example, or None
  eval_transform: Any  # (example, rng) -> x for each evaluated example, or None


def input_pipeline(config: ml_collections.ConfigDict, dataset) -> InputPipeline:
  """The augmentation and transforms ``config.augment`` asks for, checked against the dataset."""
  kind = config.augment
  if kind not in AUGMENTATIONS:
    raise ValueError(f"config.augment={kind!r}; valid: {', '.join(AUGMENTATIONS)}")
  if isinstance(dataset, StreamedDataset):
    if kind == "cifar":
      raise ValueError(
        f"config.augment='cifar' needs an in-memory image dataset; {dataset.name} is streamed "
        "(use 'imagenet')"
      )
    size = config.image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
      raise ValueError(f"config.image_size must be a positive int, got {size!r}")
    # The reference evaluates on Scale(256) + CenterCrop(224): keep that ratio.
    eval_transform = functools.partial(
      data_lib.imagenet_eval_transform, size=size, resize=round(size * 256 / 224)
    )
    # Streamed images differ in size, so even "none" needs the eval crop.
    train_transform = (
      functools.partial(data_lib.imagenet_train_transform, size=size)
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
  return InputPipeline(data_lib.cifar_augment if kind == "cifar" else None, None, None)


def build_model(config: ml_collections.ConfigDict, num_classes: int, norm):
  """The config's model; with compute_dtype bfloat16 it computes in bf16, params stay f32."""
  options = dict(config.model_options)
  if config.compute_dtype != "float32":
    options.setdefault("dtype", jnp.dtype(config.compute_dtype))
  return models.get_model(config.model, num_classes, norm=norm, **options)


def _check_config_matches(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir that holds a run of a different config."""
  path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json())
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    changed = sorted(
      k
      for k in set(previous) | set(current)
      if k not in RESUMABLE_KEYS and previous.get(k) != current.get(k)
    )
    if changed and not config.allow_config_change:
      details = "; ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in changed)
      raise ValueError(
        f"workdir {workdir} holds a run with a different config ({details}). Use a new "
        "--workdir, or pass --config.allow_config_change=True to resume it anyway"
      )
  if jax.process_index() == 0:
    # Atomically: the other processes may be reading it for the same check.
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(current, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def evaluate(eval_fn, state: TrainState, dataset, config, mesh, split: str) -> dict[str, float]:
  """Loss, accuracy and error over a whole split, with the running statistics."""
  totals = None
  source, transform = dataset, None
  if isinstance(dataset, StreamedDataset):
    source = dataset.train if split == "train" else dataset.test
    transform = input_pipeline(config, dataset).eval_transform
  batches = data_lib.eval_batches(
    source,
    config.eval_batch_size,
    split=split,
    transform=transform,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  for batch in batches:
    sums = eval_fn(state, parallel.put_batch(batch, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  accuracy = float(totals["correct"] / totals["count"])
  return {
    f"{split}_loss": float(totals["loss_sum"] / totals["count"]),
    f"{split}_accuracy": accuracy,
    f"{split}_error": 1.0 - accuracy,
  }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains ``config``'s model and variant, evaluating each epoch; resumes from ``workdir``.

  Writes to ``workdir``: ``metrics.jsonl`` (one record per logging or
  evaluation step), ``checkpoints/`` (orbax), ``summary.json``,
  ``error_curves.png`` and ``weight_distance.png``.

  Args:
    config: a run config (experiments/configs/default.py lists its keys).
    workdir: output directory; an existing run of the same config resumes.

  Returns:
    The summary dict (also written to ``summary.json``).
  """
  maybe_initialize_distributed(config)
  dataset = load_data(config)
  mesh = parallel.make_mesh(config.num_devices)
  plan = plan_lib.make_plan(config, dataset.num_train, mesh.size, jax.process_count())
  pipeline = input_pipeline(config, dataset)
  if config.eval_batch_size % mesh.size:
    raise ValueError(
      f"config.eval_batch_size={config.eval_batch_size} is not divisible by {mesh.size} devices"
    )
  os.makedirs(workdir, exist_ok=True)
  _check_config_matches(config, workdir)

  norm = plan_lib.norm_layer(plan, config, axis_name=step_lib.AXIS)
  model = build_model(config, dataset.num_classes, norm)
  seed_key = jax.random.key(config.seed)
  state_key, noise_key = jax.random.split(seed_key)
  tx = plan_lib.make_optimizer(plan, noise_key, (config.noise_alpha, config.noise_gamma))
  example = jnp.zeros((1, *dataset.input_shape), jnp.float32)
  init = jax.jit(
    lambda key: create_train_state(model, tx, example, key),
    out_shardings=parallel.replicated(mesh),
  )
  state = init(state_key)

  static = {
    "model": model,
    "tx": tx,
    "learning_rate": plan_lib.lr_schedule(plan),
    "noise_variance": plan.noise_variance,
    "skip_nonfinite": config.nonfinite_policy == "skip",
  }
  single_step = parallel.shard_train_step(step_lib.train_step, mesh, **static)
  scanned_steps = parallel.shard_train_step(step_lib.train_steps, mesh, stacked=True, **static)
  compiled_steps = {}

  def step_fn(batch_size: int, length: int):
    """The compiled call of ``length`` steps at ``batch_size``, compiled on first use."""
    if (batch_size, length) not in compiled_steps:
      fn, steps = (single_step, None) if length == 1 else (scanned_steps, length)
      compiled_steps[batch_size, length] = parallel.compile_train_step(
        fn, state, batch_size, dataset.input_shape, mesh, steps
      )
    return compiled_steps[batch_size, length]

  # Compile before reading any data, once per batch size of the run: a batch
  # that does not fit fails here, with sizes, rather than deep inside XLA.
  for size in plan.batch_sizes:
    step_fn(size, min(config.steps_per_call, plan.num_steps))
  wait_for_all_processes("bigbatch_jax_before_checkpoints", config.distributed_timeout_s)
  checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"), config.max_checkpoints_to_keep)
  metrics_log = MetricsLog(os.path.join(workdir, "metrics.jsonl"), writer=jax.process_index() == 0)
  state, start_step = checkpoints.restore_latest_good(state)
  if start_step is not None:
    metrics_log.truncate_after(start_step)
    log.info("resumed %s at step %d", workdir, start_step)
  else:
    start_step = 0
    metrics_log.truncate_after(-1)

  eval_fn = parallel.shard_eval_step(step_lib.eval_step, mesh, model=model)

  def evaluation_due(done: int) -> bool:
    period = config.eval_every_epochs
    return int(plan.epoch_at(done) / period) > int(plan.epoch_at(done - 1) / period)

  checkpoint_every = config.checkpoint_every_steps or plan.num_steps

  def diverged(step: int, what: str) -> FloatingPointError:
    lr = float(plan_lib.lr_schedule(plan)(step))
    last = checkpoints.latest_step()
    kept = (
      f"The last good checkpoint (step {last}) is kept in {checkpoints.directory}."
      if last is not None
      else "No checkpoint had been written yet."
    )
    return FloatingPointError(
      f"training diverged: {what} at step {step}, learning rate {lr:.4g} "
      f"(base {plan.regime.lr:g} x {plan.lr_scale:.4g} for the {plan.lr_rule!r} rule at "
      f"batch {plan.batch_size}). Lower the learning rate, clip the gradients (variant part "
      "'clip' or --config.grad_clip_norm), or skip non-finite updates with "
      f"--config.nonfinite_policy=skip. {kept}"
    )

  def check_finite(state: TrainState) -> None:
    bad_step = int(state.nonfinite_step)
    if bad_step >= 0:
      what = {1: "loss", 2: "gradient", 3: "loss and gradient"}[int(state.nonfinite_kind)]
      raise diverged(bad_step, f"non-finite {what}")

  first_loss = None

  def check_loss(step: int, loss: float) -> None:
    nonlocal first_loss
    if first_loss is None:
      first_loss = loss
    factor = config.divergence_loss_factor
    if factor is not None and np.isfinite(loss) and loss > factor * first_loss:
      raise diverged(
        step, f"loss {loss:.4g} is over {factor:g} times the first logged {first_loss:.4g}"
      )

  def log_eval(state: TrainState, step: int) -> dict:
    record = {"step": step, "epoch": plan.epoch_at(step)}
    record.update(evaluate(eval_fn, state, dataset, config, mesh, "test"))
    if config.eval_on_train:
      record.update(evaluate(eval_fn, state, dataset, config, mesh, "train"))
    metrics_log.write(record)
    return record

  batches = data_lib.BatchIterator(
    dataset.train if isinstance(dataset, StreamedDataset) else dataset,
    plan.batch_size if len(plan.batch_phases) == 1 else plan.batch_size_at,
    seed=config.seed,
    start_step=start_step,
    augment=pipeline.augment,
    transform=pipeline.train_transform,
    prefetch=config.prefetch_batches,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  from tqdm.auto import tqdm

  bar = tqdm(
    total=plan.num_steps,
    initial=start_step,
    desc=plan.variant.name,
    disable=not config.progress_bar or jax.process_index() != 0,
    dynamic_ncols=True,
  )
  start_time = last_time = time.perf_counter()
  last_step = start_step
  end_step = plan.num_steps
  if config.stop_after_steps is not None:
    end_step = min(end_step, config.stop_after_steps)
  phase_starts = [start for start, _ in plan.batch_phases]

  def call_length(step: int) -> int:
    """Steps of the next call: steps_per_call, less at the end or a batch-size change."""
    length = min(config.steps_per_call, end_step - step)
    for start in phase_starts:
      if step < start < step + length:
        length = start - step
    return length

  def next_batches(length: int):
    if length == 1:
      return parallel.put_batch(next(batches), mesh)
    chunk = [next(batches) for _ in range(length)]
    stacked = {k: np.stack([b[k] for b in chunk]) for k in chunk[0]}
    return parallel.put_batch(stacked, mesh, stacked=True)

  # Events (logging, evaluation, checkpoints) of the steps inside one call
  # happen at the end of that call; with steps_per_call=1 that is every step.
  try:
    with batches:
      step = start_step
      while step < end_step:
        length = call_length(step)
        state, metrics = step_fn(plan.batch_size_at(step), length)(state, next_batches(length))
        done = step + length
        finished = range(step + 1, done + 1)
        log_steps = [d for d in finished if d % config.log_every_steps == 0 or d == plan.num_steps]
        if log_steps:
          metrics = jax.device_get(metrics)  # the only host sync between evaluations
          check_finite(state)
          now = time.perf_counter()
          rate = (plan.offset_at(done) - plan.offset_at(last_step)) / (now - last_time)
          last_time, last_step = now, done
          for d in log_steps:
            values = metrics if length == 1 else {k: v[d - step - 1] for k, v in metrics.items()}
            check_loss(d, float(values["loss"]))
            record = {"step": d, "epoch": plan.epoch_at(d), **values}
            record["batch_size"] = plan.batch_size_at(d - 1)
            record["examples_per_sec"] = rate
            metrics_log.write(record)
          bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{values['lr']:.3g}")
        if any(evaluation_due(d) for d in finished) or done == plan.num_steps:
          check_finite(state)
          record = log_eval(state, done)
          bar.set_postfix(test_acc=f"{record['test_accuracy']:.4f}")
        if any(d % checkpoint_every == 0 for d in finished) or done in (plan.num_steps, end_step):
          check_finite(state)
          checkpoints.save(done, state)
        bar.update(length)
        step = done
  finally:
    bar.close()
    checkpoints.wait()

  # Every process's summary reads the writer's log, complete only once it is done.
  wait_for_all_processes("bigbatch_jax_metrics_written", config.distributed_timeout_s)
  records = metrics_log.read()
  summary = _summary(config, plan, records, time.perf_counter() - start_time)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    plot_run(records, workdir, title=plan.variant.name)
  checkpoints.close()
  return summary


def _summary(config, plan: plan_lib.RunPlan, records: list[dict], wall_time: float) -> dict:
  evals = [r for r in records if "test_accuracy" in r]
  train = [r for r in records if "weight_distance" in r and r["step"] > 0]
  final = evals[-1] if evals else {}
  summary = {
    "variant": plan.variant.name,
    "model": config.model,
    "dataset": config.dataset,
    "seed": config.seed,
    "batch_size": plan.batch_size,
    "final_batch_size": plan.batch_phases[-1][1],
    "base_batch_size": plan.base_batch_size,
    "ghost_batch_size": plan.ghost_batch_size,
    "lr_rule": plan.lr_rule,
    "lr": plan.regime.lr * plan.lr_scale,
    "noise_variance": plan.noise_variance,
    "num_devices": plan.num_devices,
    "num_train": plan.num_train,
    "updates": plan.num_steps,
    "epochs": plan.regime.epochs,
    "test_accuracy": final.get("test_accuracy"),
    "test_error": final.get("test_error"),
    "best_test_accuracy": max((r["test_accuracy"] for r in evals), default=None),
    "train_accuracy": final.get("train_accuracy"),
    "weight_distance": train[-1]["weight_distance"] if train else None,
    "skipped_steps": train[-1].get("skipped_steps", 0) if train else 0,
    "wall_time_s": wall_time,
  }
  if len(train) >= 2:
    fit = fit_log_growth([r["step"] for r in train], [r["weight_distance"] for r in train])
    summary["weight_distance_log_fit"] = fit
  return summary
