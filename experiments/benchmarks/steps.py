"""The train steps the benchmarks time, built through the library as a run builds them.

``build_step`` goes config -> ``spec.resolve`` -> ``set_up_run`` (the run
set-up ``train_and_evaluate`` uses: model, keys, optimizer, state, step
arguments) -> ``shard_train_step(train_step)``: what the loop runs.
``chunked_reference_step`` is the bigBatch ``main_gbn.py`` algorithm in JAX,
and ``step_flops`` counts the dots.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from bigbatch_jax import training
from bigbatch_jax.configs import common, f1
from bigbatch_jax.training import parallel
from bigbatch_jax.training import setup as setup_lib
from bigbatch_jax.training import spec as spec_lib
from bigbatch_jax.training import step as step_lib
from bigbatch_jax.training.loss import cross_entropy

INPUT_DIM = 784
NUM_CLASSES = 10
NUM_TRAIN = 60000  # MNIST's training set: sets the schedule, not the work per step

# What a step returns besides the new state. XLA drops whatever no output
# needs, so leaving metrics out of the outputs removes their computation.
OUTPUTS = ("all", "none", "distance", "metrics")


@dataclasses.dataclass
class Built:
  """A compiled step with its state and a batch: ``run()`` does one update."""

  fn: Callable
  state: Any
  batch: dict[str, jax.Array]
  mesh: Any

  def run(self):
    self.state, metrics = self.fn(self.state, self.batch)
    return self.state, metrics


def f1_config(variant: str = "lb+lr+gbn", batch_size: int = 4096, **overrides):
  """The F1 paper config (bigbatch_jax/configs/f1.py) at ``batch_size``, with overrides.

  The ghost batch is the paper's 128, or the whole batch when that is smaller
  (tiny smoke runs); ``ghost_batch_size=...`` overrides it.
  """
  config = f1.get_config(variant)
  config.batch_size = batch_size
  config.large_batch_size = max(batch_size, config.base_batch_size * 2)
  # The paper row's ghost batch is B_S (128) when the config leaves it None.
  ghost = config.base_batch_size if config.ghost_batch_size is None else config.ghost_batch_size
  config.ghost_batch_size = min(ghost, batch_size)
  common.override(config, overrides)
  return config


def _with_f1_model(config, hidden: int, depth: int):
  """A copy of ``config`` building F1 of ``hidden`` x ``depth`` (the benchmarks' model)."""
  config = config.copy_and_resolve_references()
  config.model = "f1"
  config.model_options.hidden = hidden
  config.model_options.depth = depth
  return config


def random_batch(batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {
    "x": rng.normal(size=(batch_size, INPUT_DIM)).astype(np.float32),
    "y": rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
  }


def _outputs_only(outputs: str):
  """Wraps ``train_step`` to return only the metrics that ``outputs`` names."""

  def step_fn(state, batch, **kw):
    new_state, metrics = step_lib.train_step(state, batch, **kw)
    if outputs == "all":
      return new_state, metrics
    distance = {k: v for k, v in metrics.items() if k.startswith("weight_distance")}
    if outputs == "distance":
      return new_state, distance
    if outputs == "metrics":
      return new_state, {k: v for k, v in metrics.items() if k not in distance}
    return new_state, {}

  return step_fn


def build_step(
  config,
  *,
  num_devices: int = 1,
  norm: Callable | None = None,
  outputs: str = "all",
  donate: bool = True,
  hidden: int = 512,
  depth: int = 5,
  seed: int = 0,
  input_shape: tuple[int, ...] = (INPUT_DIM,),
  steps_per_call: int = 1,
) -> Built:
  """The library's train step for ``config`` on F1 with 784 inputs, ready to run.

  Args:
    config: a run config (see :func:`f1_config`).
    num_devices: devices of the data-parallel mesh.
    norm: a norm constructor replacing the plan's GhostBatchNorm (for
      ``flax.linen.BatchNorm``), or None.
    outputs: which metrics the step returns, one of ``OUTPUTS``.
    donate: donate the state to the step (as the library does).
    hidden, depth: F1's width and depth (512 and 5 in the paper).
    seed: seed of the parameters and of the random batch.
    input_shape: one example's shape (F1 flattens it).
    steps_per_call: updates per call; above 1 the library's ``train_steps``
      (``lax.scan`` over a stacked batch, as ``config.steps_per_call`` runs it)
      on the same batch repeated.

  Returns:
    A :class:`Built` whose state is already on the mesh.
  """
  if outputs not in OUTPUTS:
    raise ValueError(f"outputs={outputs!r}; valid: {OUTPUTS}")
  mesh = parallel.make_mesh(num_devices)
  config = _with_f1_model(config, hidden, depth)
  spec = spec_lib.resolve(config, num_train=NUM_TRAIN, num_devices=mesh.size)
  plan = spec.plan
  run = training.set_up_run(spec, mesh, NUM_CLASSES, input_shape, norm=norm, seed=seed)
  state, static = run.state, run.step_args
  step_fn = _outputs_only(outputs)
  if steps_per_call > 1:
    fn = parallel.shard_train_step(step_lib.train_steps, mesh, stacked=True, **static)
  elif donate:
    fn = parallel.shard_train_step(step_fn, mesh, **static)
  else:
    # shard_train_step without donate_argnums: the same program, state copied.
    mapped = jax.shard_map(
      functools.partial(step_fn, num_replicas=mesh.size, **static),
      mesh=mesh,
      in_specs=(jax.sharding.PartitionSpec(), jax.sharding.PartitionSpec(step_lib.AXIS)),
      out_specs=(jax.sharding.PartitionSpec(), jax.sharding.PartitionSpec()),
      check_vma=False,
    )
    fn = jax.jit(mapped)
  data = random_batch(plan.batch_size, seed)
  data["x"] = data["x"][:, : int(np.prod(input_shape))].reshape(-1, *input_shape)
  if steps_per_call > 1:
    stacked = {k: np.stack([v] * steps_per_call) for k, v in data.items()}
    return Built(fn, state, parallel.put_batch(stacked, mesh, stacked=True), mesh)
  batch = parallel.put_batch(data, mesh)
  return Built(fn, state, batch, mesh)


def flax_batch_norm(config, axis_name: str | None = step_lib.AXIS) -> Callable:
  """``flax.linen.BatchNorm`` with the run's momentum and epsilon (whole-batch statistics)."""
  return functools.partial(
    nn.BatchNorm, momentum=config.bn_momentum, epsilon=config.bn_epsilon, axis_name=axis_name
  )


def two_pass_ghost_batch_norm(config) -> Callable:
  """The plan's GhostBatchNorm with flax's two-pass normalization (the code before; two_pass.py)."""
  from experiments.benchmarks.two_pass import TwoPassGhostBatchNorm

  spec = spec_lib.resolve(config, num_train=NUM_TRAIN, num_devices=1)
  return setup_lib.norm_layer(spec, step_lib.AXIS, layer=TwoPassGhostBatchNorm)


def chunked_reference_step(config, *, seed: int = 0) -> Built:
  """bigBatch ``main_gbn.py``'s update, in JAX: ghost batches one after another.

  main_gbn.py splits the batch into ``batch_size // mini_batch_size`` chunks;
  for each chunk it runs forward and backward through the model with plain
  batch norm (so the running statistics are updated once per chunk, in
  order) and accumulates the gradients; then it divides by the number of
  chunks, clips at global norm 5 and takes the SGD step. Here the chunks run
  in a ``lax.scan`` inside one ``jax.jit`` (the loop compiled once, its body
  the chunk's forward and backward), then the run's optimizer chain (clip,
  weight decay, momentum SGD, batch-size scaling) is applied, and the loss and
  accuracy averaged over chunks are returned as the reference logs them.
  """
  spec = spec_lib.resolve(_with_f1_model(config, 512, 5), num_train=NUM_TRAIN, num_devices=1)
  plan = spec.plan
  ghost = plan.ghost_batch_size or plan.base_batch_size
  num_chunks = plan.batch_size // ghost
  norm = flax_batch_norm(config, axis_name=None)
  model = setup_lib.build_model(spec, NUM_CLASSES, norm)
  state_key, noise_key = setup_lib.run_keys(seed)
  tx = setup_lib.run_optimizer(plan, noise_key)
  example = jnp.zeros((1, INPUT_DIM), jnp.float32)

  @jax.jit
  def init(key):
    variables = model.init(key, example, train=False)
    params = variables["params"]
    return {"params": params, "batch_stats": variables["batch_stats"], "opt": tx.init(params)}

  def chunk_grads(params, batch_stats, x, y):
    def loss_fn(p):
      logits, updates = model.apply(
        {"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
      )
      return cross_entropy(logits, y), (logits, updates["batch_stats"])

    return jax.grad(loss_fn, has_aux=True)(params)

  @functools.partial(jax.jit, donate_argnums=0)
  def step(state, batch):
    xs = batch["x"].reshape(num_chunks, ghost, INPUT_DIM)
    ys = batch["y"].reshape(num_chunks, ghost)

    def body(carry, chunk):
      grads_sum, batch_stats, loss_sum, correct = carry
      x, y = chunk
      grads, (logits, batch_stats) = chunk_grads(state["params"], batch_stats, x, y)
      loss = cross_entropy(logits, y)
      grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
      correct = correct + jnp.mean(jnp.argmax(logits, -1) == y)
      return (grads_sum, batch_stats, loss_sum + loss, correct), None

    zeros = jax.tree.map(jnp.zeros_like, state["params"])
    init_carry = (zeros, state["batch_stats"], jnp.zeros(()), jnp.zeros(()))
    (grads, batch_stats, loss_sum, correct), _ = lax.scan(body, init_carry, (xs, ys))
    grads = jax.tree.map(lambda g: g / num_chunks, grads)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss_sum / num_chunks, "train_batch_accuracy": correct / num_chunks}
    return {"params": params, "batch_stats": batch_stats, "opt": opt}, metrics

  data = random_batch(plan.batch_size, seed)
  batch = {k: jnp.asarray(v) for k, v in data.items()}
  return Built(step, init(state_key), batch, None)


def f1_dims(hidden: int = 512, depth: int = 5, input_dim: int = INPUT_DIM) -> list[tuple[int, int]]:
  """(in, out) of F1's dense layers."""
  sizes = [input_dim] + [hidden] * depth + [NUM_CLASSES]
  return list(itertools.pairwise(sizes))


def step_flops(
  batch_size: int, hidden: int = 512, depth: int = 5, input_dim: int = INPUT_DIM
) -> int:
  """FLOPs of the dots of one F1 train step.

  Forward 2*B*in*out per layer, the weight gradients the same, and the input
  gradients of every layer but the first (the data needs no gradient).
  """
  dims = f1_dims(hidden, depth, input_dim)
  forward = sum(2 * batch_size * i * o for i, o in dims)
  input_grads = sum(2 * batch_size * i * o for i, o in dims[1:])
  return 2 * forward + input_grads


def matmul_flops(n: int) -> int:
  return 2 * n**3


def square_matmul(n: int, seed: int = 0) -> Callable[[], jax.Array]:
  """A zero-argument jitted ``jnp.dot`` of two float32 n x n matrices (the peak probe)."""
  rng = np.random.default_rng(seed)
  a = jnp.asarray(rng.normal(size=(n, n)).astype(np.float32))
  b = jnp.asarray(rng.normal(size=(n, n)).astype(np.float32))
  dot = jax.jit(jnp.dot)
  return lambda: dot(a, b)


def _dots(x, ws):
  acts, h = [], x
  for w in ws:
    acts.append(h)
    h = h @ w
  g, grads = h, []
  for i in reversed(range(len(ws))):
    grads.append(acts[i].T @ g)
    if i:
      g = g @ ws[i].T
  return grads


def _summed_dots(xs, ws, dots=_dots):
  """``dots(x, ws)`` of each ``x`` along the leading axis of ``xs``, summed in one ``lax.scan``."""

  def body(total, x):
    return jax.tree.map(jnp.add, total, dots(x, ws)), None

  zeros = [jnp.zeros(w.shape, jnp.float32) for w in ws][::-1]
  return lax.scan(body, zeros, xs)[0]


@jax.jit
def population_dot_totals(xs, ws):
  """A population's F1 dots over the updates of one call, each member's summed.

  ``xs`` is (updates, members, batch, in) and each ``ws[i]`` (members, in, out):
  the members' products are batched by ``jax.vmap`` as a population step
  batches them (one batched product per layer and direction), and the updates
  are a ``lax.scan`` over fresh inputs (so nothing is hoisted out of the loop),
  as a population call scans them. Returns the weight-gradient products of
  the layers, last layer first, each (members, in, out).
  """
  return _summed_dots(xs, ws, jax.vmap(_dots))


def population_dots(
  members: int, length: int, batch_size: int, hidden: int, depth: int, input_dim: int
) -> Callable[[], Any]:
  """Only the dots of ``length`` updates of a population of F1s, as one jitted call."""
  rng = np.random.default_rng(0)
  dims = f1_dims(hidden, depth, input_dim)
  x = jnp.asarray(rng.normal(size=(length, members, batch_size, input_dim)).astype(np.float32))
  ws = [jnp.asarray(rng.normal(size=(members, *d)).astype(np.float32) * 0.01) for d in dims]
  return lambda: population_dot_totals(x, ws)


def step_dots(
  batch_size: int, hidden: int = 512, depth: int = 5, chunk: int | None = None
) -> Callable[[], Any]:
  """Only the dots of an F1 step (forward, weight and input gradients), jitted, same shapes.

  With ``chunk`` the batch is processed as ``batch_size // chunk`` chunks one
  after another in a ``lax.scan`` (the dots of the chunked reference).
  """
  rng = np.random.default_rng(0)
  dims = f1_dims(hidden, depth)
  x = jnp.asarray(rng.normal(size=(batch_size, INPUT_DIM)).astype(np.float32))
  ws = [jnp.asarray(rng.normal(size=d).astype(np.float32) * 0.01) for d in dims]
  if chunk is None:
    dots = jax.jit(_dots)
  else:

    @jax.jit
    def dots(x, ws):
      return _summed_dots(x.reshape(batch_size // chunk, chunk, INPUT_DIM), ws)

  return lambda: dots(x, ws)
