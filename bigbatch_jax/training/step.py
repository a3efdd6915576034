"""The pure train and eval steps, written for one device's shard of the batch.

Both run inside ``jax.shard_map`` (or ``jax.pmap``) over the axis "batch":
gradients and metrics are averaged with ``lax.pmean``; GhostBatchNorm forms
its ghost batches inside each device's shard and keeps the running statistics
identical on every replica. With a mesh of one device the same code runs.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax

from bigbatch_jax import transforms
from bigbatch_jax.ghost_noise import RNG_COLLECTION
from bigbatch_jax.noise import multiplicative_noise_weights
from bigbatch_jax.training.loss import correct, cross_entropy, eval_logits
from bigbatch_jax.training.state import TrainState

AXIS = "batch"
GHOST_NOISE_TAG = 1  # folded into the step's noise key for the "ghost_noise" rng


def weight_distances(params, initial_params) -> dict[str, jax.Array]:
  """||w - w0|| in total and for each top-level layer (Hoffer eq. 4, Figure 2).

  Each leaf's squared distance is reduced once; the total sums the layers'
  (on a GPU a second pass over the parameters costs as much as the step's
  optimizer, measured by experiments/benchmarks).
  """
  if not isinstance(params, dict):
    return {"weight_distance": transforms.tree_distance(params, initial_params)}
  squared = {
    name: transforms.squared_distance(params[name], initial_params[name]) for name in params
  }
  distances = {"weight_distance": jnp.sqrt(sum(squared.values()))}
  for name, value in squared.items():
    distances[f"weight_distance/{name}"] = jnp.sqrt(value)
  return distances


def _local_noise_weights(key, local_batch: int, num_replicas: int, variance: float):
  """This device's slice of the global batch's multiplicative noise weights.

  The weights are drawn for the whole global batch from a replicated key, so
  a run gives the same weights per example whatever the device count.
  """
  weights = multiplicative_noise_weights(key, local_batch * num_replicas, variance)
  start = lax.axis_index(AXIS) * local_batch
  return lax.dynamic_slice_in_dim(weights, start, local_batch)


def opt_state_after_skip(new_opt_state, old_opt_state, finite: jax.Array):
  """The optimizer state after a step whose update is applied only when ``finite``.

  A skipped step (the "skip" non-finite policy) keeps the old accumulators
  (floating-point leaves: the momentum buffer, ...) but takes the new counters
  and keys (integer and key leaves: the schedule's and the clipping window's
  counts, the white noise's count and key), so every optimizer counter equals
  ``state.step`` after any mix of applied and skipped steps.

  Why the data clock: the papers' regimes run on iterations of the data loop.
  Hoffer et al.'s regime (section 5) drops the learning rate at epochs, i.e.
  after a given amount of data, and its adaptation fixes the number of
  iterations; the scaling rule (eq. 7) and a growing batch (Smith et al.) take
  the batch size of the batch being consumed, which the data iterator picks
  by ``state.step``; the clipping window ("the first few iterations", section
  4) and the white noise's decay 1 / (1 + t)**gamma (Jaiswal & Taura, t the
  iteration) count iterations. A skipped step consumed its batch, so it is an
  iteration whose gradient was dropped: the clocks advance, the accumulators
  do not. Left behind, the optimizer's counters would trail ``state.step`` by
  one per skip, applying the previous batch size's scale and a late drop
  while the logged learning rate (a function of ``state.step``) moved on.
  """

  def pick(new, old):
    if jnp.issubdtype(new.dtype, jnp.inexact):
      return jnp.where(finite, new, old)
    return new

  return jax.tree.map(pick, new_opt_state, old_opt_state)


def apply_nonfinite_policy(state: TrainState, new: TrainState, loss, grad_norm, skip: bool):
  """``new`` with the run's policy for a non-finite loss or gradient applied.

  With ``skip`` a non-finite update keeps ``state``'s parameters, statistics
  and optimizer accumulators, advances the optimizer's counters
  (:func:`opt_state_after_skip`) and counts the skip; otherwise the update stands and
  the first such step and what was not finite (1 loss, 2 gradient, 3 both)
  are recorded for the loop to stop at.
  """
  loss_ok, grad_ok = jnp.isfinite(loss), jnp.isfinite(grad_norm)
  finite = loss_ok & grad_ok
  if skip:
    keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(finite, x, y), a, b)  # noqa: E731
    return new.replace(
      params=keep(new.params, state.params),
      batch_stats=keep(new.batch_stats, state.batch_stats),
      opt_state=opt_state_after_skip(new.opt_state, state.opt_state, finite),
      skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
    )
  first = (state.nonfinite_step < 0) & ~finite
  kind = jnp.where(loss_ok, 0, 1) + jnp.where(grad_ok, 0, 2)
  return new.replace(
    nonfinite_step=jnp.where(first, state.step, state.nonfinite_step),
    nonfinite_kind=jnp.where(first, kind, state.nonfinite_kind),
  )


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  *,
  model,
  tx: optax.GradientTransformation,
  learning_rate: Callable[[jax.Array], jax.Array],
  num_replicas: int,
  noise_variance: float | jax.Array = 0.0,
  skip_nonfinite: bool = False,
  lr_scale: Callable[[optax.OptState], jax.Array] | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update on one device's shard of the global batch.

  Args:
    state: the replicated training state.
    batch: this device's shard: ``x`` inputs and ``y`` integer labels.
    model: a flax module called as ``model.apply(..., train=True)``.
    tx: the optimizer, applied to the cross-device mean gradient.
    learning_rate: the effective learning-rate schedule, for logging.
    num_replicas: devices along the "batch" axis (static).
    noise_variance: multiplicative noise sigma**2 (Hoffer section 4); 0: off;
      an array (a population member's value, even 0) keeps it on.
    skip_nonfinite: see :func:`apply_nonfinite_policy`.
    lr_scale: opt_state -> a further factor on the logged learning rate (the
      "dist" drops, ``optimizer.distance_drop_scale``), or None.

  Returns:
    The new state and replicated scalar metrics.
  """
  step_key = jax.random.fold_in(state.key, state.step)
  noise_key, dropout_key = jax.random.split(step_key)
  dropout_key = jax.random.fold_in(dropout_key, lax.axis_index(AXIS))
  # Replicated, as the multiplicative noise: Ghost Noise Injection draws its
  # ghost batches from the global batch, the same draws on every device.
  ghost_noise_key = jax.random.fold_in(noise_key, GHOST_NOISE_TAG)
  x, y = batch["x"], batch["y"]
  weights = None
  if isinstance(noise_variance, jax.Array) or noise_variance:
    weights = _local_noise_weights(noise_key, y.shape[0], num_replicas, noise_variance)

  def loss_fn(params):
    logits, updates = model.apply(
      {"params": params, "batch_stats": state.batch_stats},
      x,
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": dropout_key, RNG_COLLECTION: ghost_noise_key},
    )
    objective = cross_entropy(logits, y, weights)
    return objective, (cross_entropy(logits, y), logits, updates["batch_stats"])

  grads, (loss, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  grads = lax.pmean(grads, AXIS)
  # GhostBatchNorm already keeps the statistics replicated; the pmean keeps
  # any other mutable statistics of a user's model consistent too.
  batch_stats = lax.pmean(batch_stats, AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  loss, accuracy = lax.pmean((loss, jnp.mean(correct(logits, y))), AXIS)
  grad_norm = optax.tree.norm(grads)
  new_state = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state)
  new_state = apply_nonfinite_policy(state, new_state, loss, grad_norm, skip_nonfinite)
  lr = learning_rate(state.step)
  if lr_scale is not None:
    lr = lr * lr_scale(new_state.opt_state)
  metrics = {
    "loss": loss,
    "train_batch_accuracy": accuracy,
    "grad_norm": grad_norm,
    "lr": lr,
    "skipped_steps": new_state.skipped_steps,
    **weight_distances(new_state.params, state.initial_params),
  }
  return new_state.replace(step=state.step + 1), metrics


def train_steps(state: TrainState, batches: dict[str, jax.Array], **kwargs):
  """``train_step`` over the leading axis of ``batches`` with ``lax.scan``.

  Several updates per jitted call, for small models whose step is short next
  to the cost of dispatching it; the metrics come back stacked, one per step.
  """
  return lax.scan(lambda s, batch: train_step(s, batch, **kwargs), state, batches)


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, model) -> dict[str, jax.Array]:
  """Summed loss, correct predictions and count on one shard, with running statistics."""
  logits = eval_logits(model, state.params, state.batch_stats, batch["x"])
  mask = batch["mask"].astype(jnp.float32)
  sums = {
    "loss_sum": cross_entropy(logits, batch["y"], mask, reduction="sum"),
    "correct": jnp.sum(correct(logits, batch["y"]).astype(jnp.float32) * mask),
    "count": jnp.sum(mask),
  }
  return lax.psum(sums, AXIS)
