"""Optax gradient transformations for large-batch training.

Each factory returns an ``optax.GradientTransformation`` that composes in any
``optax.chain``. They build on optax's own transforms (``scale_by_schedule``,
``clip_by_global_norm``, ``conditionally_transform``; ``add_noise``'s rule) and add
only what the papers specify on top:

* :func:`scale_by_batch_size` -- the learning-rate scaling rule of Hoffer et
  al. 2017, eq. 7 (square root), or the linear rule of Goyal et al. 2017 and
  Jaiswal & Taura, for a fixed batch size or a batch-size schedule.
* :func:`add_decaying_noise` -- Jaiswal & Taura's decaying white gradient noise.
* :func:`clip_by_global_norm_during` -- gradient clipping during the first
  updates only (Hoffer et al. 2017, section 4).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# A fixed batch size or a jittable step -> batch size (traced on device). The
# host-side schedule of a run is bigbatch_jax.data.BatchSize / BatchSchedule;
# RunPlan.batch_size_schedule() turns it into this.
JittableBatchSize = int | Callable[[jax.Array], jax.Array | int]

LR_RULE_EXPONENTS = {"sqrt": 0.5, "linear": 1.0, "none": 0.0}


def lr_scaling_exponent(rule: str | float) -> float:
  """The exponent p of a learning-rate scaling rule lr_L = lr_S * r**p.

  Args:
    rule: ``"sqrt"`` (p = 0.5, Hoffer et al. 2017 eq. 7), ``"linear"`` (p = 1,
      Goyal et al. 2017; Jaiswal & Taura section 3.1), ``"none"`` (p = 0), or a
      number used as p directly.

  Returns:
    The exponent as a float.
  """
  if isinstance(rule, str):
    if rule not in LR_RULE_EXPONENTS:
      raise ValueError(
        f"unknown learning-rate rule {rule!r}; valid rules are "
        f"{sorted(LR_RULE_EXPONENTS)} or a number (the exponent p in r**p)"
      )
    return LR_RULE_EXPONENTS[rule]
  if isinstance(rule, numbers.Real) and not isinstance(rule, bool):
    return float(rule)
  raise ValueError(
    f"learning-rate rule must be one of {sorted(LR_RULE_EXPONENTS)} or a number, got {rule!r}"
  )


def _check_positive_size(name: str, value) -> None:
  # Traced values (e.g. under optax.inject_hyperparams) cannot be checked here.
  if isinstance(value, numbers.Real) and value <= 0:
    raise ValueError(f"{name} must be a positive number of examples, got {value!r}")


def batch_size_scale_schedule(
  batch_size: JittableBatchSize, base_batch_size: int, rule: str | float = "sqrt"
) -> optax.Schedule:
  """The factor (batch_size / base_batch_size)**p as a function of the step.

  This is the schedule :func:`scale_by_batch_size` multiplies updates by; the
  training loop evaluates the same function to log the effective learning rate.

  Args:
    batch_size: the batch size, or a schedule mapping the update count to the
      batch size (growing-batch regimes).
    base_batch_size: the batch size the base learning rate was tuned for (B_S).
    rule: the scaling rule, see :func:`lr_scaling_exponent`.

  Returns:
    An ``optax.Schedule``: update count -> multiplicative factor (float32).
  """
  exponent = lr_scaling_exponent(rule)
  _check_positive_size("base_batch_size", base_batch_size)
  if not callable(batch_size):
    _check_positive_size("batch_size", batch_size)

  def schedule(count):
    size = batch_size(count) if callable(batch_size) else batch_size
    ratio = jnp.asarray(size, jnp.float32) / jnp.asarray(base_batch_size, jnp.float32)
    return ratio**exponent

  return schedule


def scale_by_batch_size(
  batch_size: JittableBatchSize, base_batch_size: int, rule: str | float = "sqrt"
) -> optax.GradientTransformation:
  """Scales updates by (batch_size / base_batch_size)**p.

  Placed after the optimizer (e.g. after ``optax.sgd``), this multiplies the
  learning rate of a regime tuned for ``base_batch_size`` by r**p with
  r = batch_size / base_batch_size. With the square-root rule the covariance of
  the update, eta**2 / M times the per-sample gradient second moment (Hoffer et
  al. 2017, eq. 6), is the same at every batch size M (eq. 7).

  ``batch_size`` may be a schedule (update count -> batch size), so a regime
  that grows the batch keeps the rule at every step.

  Args:
    batch_size: the batch size B_L, or a schedule of it.
    base_batch_size: the batch size B_S of the base regime.
    rule: ``"sqrt"``, ``"linear"``, ``"none"`` or an exponent p.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, optax, bigbatch_jax
    >>> tx = optax.chain(optax.sgd(0.1), bigbatch_jax.scale_by_batch_size(4096, 128))
    >>> params = {"w": jnp.ones(3)}
    >>> updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params))
    >>> round(float(updates["w"][0]), 4)  # -0.1 * sqrt(32)
    -0.5657

  References:
    Hoffer, Hubara, Soudry 2017, "Train longer, generalize better", section 4,
    eq. 7; Goyal et al. 2017 (linear rule); Jaiswal & Taura, section 3.1.
  """
  return optax.scale_by_schedule(batch_size_scale_schedule(batch_size, base_batch_size, rule))


def add_decaying_noise(
  key: jax.Array, alpha: float = 1e-5, gamma: float = 0.55
) -> optax.GradientTransformation:
  """Adds white Gaussian noise N(0, alpha / (1 + t)**gamma) to the updates.

  Jaiswal & Taura's remedy: with linear learning-rate scaling, add decaying
  white noise to the gradient at update t (t = 0 for the first update). This
  is ``optax.add_noise`` (variance eta / (count + 1)**gamma with count = t,
  the same ``optax.AddNoiseState``) with the paper's names, defaults and
  argument checks, and one difference in how the noise is drawn: one
  ``jax.random.normal`` call for all parameters, split into the leaves,
  instead of one key and one call per leaf. The draw is the whole cost of this
  transform (1.45 M threefry Gaussians per F1 step); one flat call is ~1.5x
  cheaper on the CPU than a call per leaf (experiments/benchmarks measures
  the overhead). The noise is different numbers from the same distribution.

  Data parallelism: the noise key lives in the optimizer state. Apply the
  optimizer to the cross-device mean of the gradients with a replicated
  optimizer state (as ``bigbatch_jax.training`` does): every replica then draws
  the same noise from the same key and the parameters stay identical.

  Args:
    key: a typed JAX key (``jax.random.key(seed)``); split on every update.
    alpha: the initial noise variance (the paper uses 1e-5).
    gamma: the decay exponent of the variance (the paper uses 0.55).

  Returns:
    An ``optax.GradientTransformation`` whose state holds the count and key.

  Examples:
    >>> import jax, optax, bigbatch_jax
    >>> tx = optax.chain(bigbatch_jax.add_decaying_noise(jax.random.key(0)), optax.sgd(0.1))

  References:
    Jaiswal & Taura, "Overcoming Generalization Gap in Large Mini-Batch
    Training of Deep Neural Networks", section 3.1 (alpha = 1e-5, gamma = 0.55).
  """
  if isinstance(key, numbers.Integral) or not hasattr(key, "dtype"):
    raise TypeError(f"add_decaying_noise needs a JAX key such as jax.random.key(0), got {key!r}")
  for name, value in (("alpha", alpha), ("gamma", gamma)):
    if isinstance(value, numbers.Real) and value < 0:
      raise ValueError(f"{name} must be >= 0, got {value!r}")

  def init_fn(params):
    del params
    return optax.AddNoiseState(count=jnp.zeros([], jnp.int32), rng_key=key)

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    std = jnp.sqrt(alpha / count**gamma)
    rng_key, sample_key = jax.random.split(state.rng_key)
    leaves, treedef = jax.tree.flatten(updates)
    sizes = [leaf.size for leaf in leaves]
    noise = jax.random.normal(sample_key, (sum(sizes),), jnp.float32)
    offsets = np.cumsum([0, *sizes])
    noisy = [
      leaf + (std * noise[start:stop]).reshape(leaf.shape).astype(leaf.dtype)
      for leaf, start, stop in zip(leaves, offsets[:-1], offsets[1:], strict=True)
    ]
    return treedef.unflatten(noisy), optax.AddNoiseState(count=count, rng_key=rng_key)

  return optax.GradientTransformation(init_fn, update_fn)


def clip_by_global_norm_during(max_norm: float, steps: int) -> optax.GradientTransformation:
  """Clips updates to a global norm of ``max_norm`` during the first ``steps`` updates.

  Hoffer et al. (section 4) clip or normalize the gradients "for the first few
  iterations" to prevent divergence at the raised large-batch learning rate
  (their footnote 9 compares this to a learning-rate warm-up). After ``steps``
  updates the gradients pass through unchanged. To clip on every update, as
  the bigBatch reference code does, use ``optax.clip_by_global_norm``.

  Args:
    max_norm: the largest global norm of the updates while clipping is on.
    steps: the number of updates (from the first) that are clipped.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import optax, bigbatch_jax
    >>> tx = optax.chain(bigbatch_jax.clip_by_global_norm_during(5.0, 100), optax.sgd(0.1))

  References:
    Hoffer, Hubara, Soudry 2017, section 4 and footnote 9.
  """
  if isinstance(max_norm, numbers.Real) and max_norm <= 0:
    raise ValueError(f"max_norm must be > 0, got {max_norm!r}")
  if isinstance(steps, numbers.Real) and (steps < 0 or int(steps) != steps):
    raise ValueError(f"steps must be a non-negative whole number of updates, got {steps!r}")
  return optax.conditionally_transform(
    optax.clip_by_global_norm(max_norm), lambda count: count < steps
  )


def squared_distance(a, b) -> jax.Array:
  """||a - b||**2 over all leaves of two pytrees of the same structure, each leaf reduced once."""
  pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  return sum(jnp.sum(jnp.square(x - y)) for x, y in pairs)


def tree_distance(a, b) -> jax.Array:
  """||a - b||, the Euclidean distance of two pytrees (e.g. ||w - w0||, Hoffer eq. 4)."""
  return jnp.sqrt(squared_distance(a, b))


class DistanceDropsState(NamedTuple):
  """State of :func:`scale_by_distance_drops`."""

  initial_params: optax.Params  # w0, the parameters at init
  num_drops: jax.Array  # int32 scalar: targets reached so far
  drop_factor: jax.Array  # float32 scalar: the multiplier per drop

  @property
  def scale(self) -> jax.Array:
    """factor**drops: the multiplier the transform applies now (float32 scalar)."""
    return self.drop_factor**self.num_drops


def scale_by_distance_drops(
  distances: Sequence[float], factor: float = 0.1
) -> optax.GradientTransformation:
  """Multiplies updates by factor**k once ||w - w0|| has reached k of ``distances``.

  Hoffer et al. (section 5) observe that "the distance between the current
  weight and the initialization point can be a good measure to decide upon
  when to decrease the learning rate". Placed after the optimizer, this drops
  the learning rate by ``factor`` each time the weight distance, measured on
  device at every update, first reaches the next target; drops are never
  undone. The state keeps a copy of w0.

  Args:
    distances: increasing positive targets for ||w - w0|| (e.g. the distances
      at which a reference small-batch run dropped its learning rate).
    factor: the multiplier applied at each drop.

  Returns:
    An ``optax.GradientTransformation``; its ``update`` needs ``params``.

  Examples:
    >>> import optax, bigbatch_jax
    >>> tx = optax.chain(optax.sgd(0.1), bigbatch_jax.scale_by_distance_drops((4.0, 6.0)))

  References:
    Hoffer, Hubara, Soudry 2017, section 5.
  """
  targets = [float(d) for d in distances]
  if not targets or any(d <= 0 for d in targets) or targets != sorted(set(targets)):
    raise ValueError(f"distances must be positive and increasing, got {list(distances)!r}")
  if isinstance(factor, numbers.Real) and not factor > 0:
    raise ValueError(f"factor must be > 0, got {factor!r}")
  target_array = jnp.asarray(targets, jnp.float32)

  def init_fn(params):
    return DistanceDropsState(
      initial_params=jax.tree.map(jnp.copy, params),
      num_drops=jnp.zeros([], jnp.int32),
      drop_factor=jnp.asarray(factor, jnp.float32),
    )

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("scale_by_distance_drops needs params: call update(updates, state, params)")
    distance = tree_distance(params, state.initial_params)
    reached = jnp.sum(distance >= target_array).astype(jnp.int32)
    state = state._replace(num_drops=jnp.maximum(state.num_drops, reached))
    updates = jax.tree.map(lambda u: (state.scale * u).astype(u.dtype), updates)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


class MomentumRestartState(NamedTuple):
  """State of :func:`restart_momentum_at`."""

  inner_state: optax.OptState  # the wrapped transform's state
  count: jax.Array  # int32 scalar: updates so far


def _zero_traces(state: optax.OptState, restart: jax.Array) -> optax.OptState:
  """Zeroes every ``optax.TraceState.trace`` in ``state`` where ``restart`` holds."""

  def reset(node):
    if not isinstance(node, optax.TraceState):
      return node
    return node._replace(
      trace=jax.tree.map(lambda t: jnp.where(restart, jnp.zeros_like(t), t), node.trace)
    )

  return jax.tree.map(reset, state, is_leaf=lambda node: isinstance(node, optax.TraceState))


def _has_trace(state: optax.OptState) -> bool:
  nodes = jax.tree.leaves(state, is_leaf=lambda node: isinstance(node, optax.TraceState))
  return any(isinstance(node, optax.TraceState) for node in nodes)


def restart_momentum_at(
  inner: optax.GradientTransformation, steps: Sequence[int]
) -> optax.GradientTransformation:
  """Zeroes the momentum trace of ``inner`` before the updates numbered ``steps``.

  The bigBatch reference code builds a new ``torch.optim.SGD`` at every epoch
  (``adjust_optimizer`` replays the regime, whose epoch-0 entry names the
  optimizer), so its momentum buffer restarts empty each epoch; PyTorch's first
  step then sets the buffer to the bare gradient. Zeroing optax's
  ``TraceState`` before the update gives exactly that: the trace becomes
  ``g + momentum * 0``, so the first update after a restart of
  ``chain(add_decayed_weights(wd), sgd(lr, momentum))`` is ``-lr * (g + wd * w)``
  (with Nesterov too). Every other state of ``inner`` (schedule counts, noise
  keys) runs on, as the reference's learning-rate regime does.

  Use :func:`bigbatch_jax.regimes.epoch_first_steps` for the steps of an
  epoch-wise restart.

  Args:
    inner: a transform whose state holds at least one ``optax.TraceState``
      (``optax.sgd`` with momentum, ``optax.trace``, ``optax.lars``).
    steps: update counts (0 = the first update) before which the trace is zeroed.

  Returns:
    An ``optax.GradientTransformation`` with a :class:`MomentumRestartState`.

  Examples:
    >>> import optax, bigbatch_jax
    >>> tx = bigbatch_jax.restart_momentum_at(optax.sgd(0.1, momentum=0.9), [0, 15, 30])

  References:
    Hoffer, Hubara, Soudry 2017, reference code github.com/eladhoffer/bigBatch
    (commit 0c69f28: main_normal.py, utils.adjust_optimizer, models/mnist_f1.py);
    torch.optim.SGD's momentum buffer initialization.
  """
  restart_steps = sorted({int(s) for s in steps})
  if any(s < 0 for s in restart_steps):
    raise ValueError(f"restart steps must be update counts >= 0, got {list(steps)!r}")
  restart_array = jnp.asarray(restart_steps, jnp.int32)

  def init_fn(params):
    inner_state = inner.init(params)
    if not _has_trace(inner_state):
      raise ValueError(
        "restart_momentum_at found no momentum trace (optax.TraceState) in the wrapped "
        "transform's state; wrap a chain that contains optax.sgd(..., momentum=m) or optax.trace"
      )
    return MomentumRestartState(inner_state=inner_state, count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    restart = jnp.any(restart_array == state.count) if restart_steps else jnp.asarray(False)
    inner_state = _zero_traces(state.inner_state, restart)
    updates, inner_state = optax.with_extra_args_support(inner).update(
      updates, inner_state, params, **extra_args
    )
    count = optax.safe_increment(state.count)
    return updates, MomentumRestartState(inner_state=inner_state, count=count)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
