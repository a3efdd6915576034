"""One run set-up: model, keys, optimizer, initial state and the step's arguments.

The training loop, the benchmarks and the diagnostics build a run from its
resolved :class:`~bigbatch_jax.training.spec.RunSpec` through these
functions, so they train and measure the same program.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from bigbatch_jax import models
from bigbatch_jax.ghost_batch_norm import GhostBatchNorm
from bigbatch_jax.ghost_noise import GhostNoiseBatchNorm
from bigbatch_jax.models.layers import legacy_torch_bn_scale_init
from bigbatch_jax.training import parallel, population_grid
from bigbatch_jax.training.optimizer import distance_drop_scale, make_optimizer
from bigbatch_jax.training.plan import RunPlan, lr_schedule
from bigbatch_jax.training.state import TrainState, create_train_state
from bigbatch_jax.training.step import AXIS

if TYPE_CHECKING:
  from bigbatch_jax.training.spec import RunSpec


def norm_layer(spec: RunSpec, axis_name: str | None, layer=None):
  """The GhostBatchNorm constructor the model is built with.

  Every variant uses GhostBatchNorm so that all variants share one parameter
  tree (interpolating SB and LB parameters needs that); without ``gbn`` its
  ghost size is None, which is flax BatchNorm over the whole (global) batch.
  With ``gni`` it is GhostNoiseBatchNorm (the same variables), whose noise
  comes from the step's ``"ghost_noise"`` rng. ``layer`` replaces the class
  (same arguments), e.g. for a benchmark.
  """
  plan, model = spec.plan, spec.model
  # PyTorch < 1.0's U(0, 1) scales (the reference code's); flax's ones otherwise.
  options = {"scale_init": legacy_torch_bn_scale_init} if plan.bn_scale_uniform else {}
  if plan.variant.ghost_noise:
    # The plan's protocol never gives it the unbiased running variance (Protocol.applies).
    layer = layer or GhostNoiseBatchNorm
    options["ghost_draws"] = model.ghost_draws
  else:
    options["running_variance"] = plan.running_variance
  return functools.partial(
    layer or GhostBatchNorm,
    **options,
    ghost_batch_size=plan.ghost_batch_size,
    stats_update=model.ghost_stats_update,
    ghost_variance=model.ghost_variance,
    momentum=model.bn_momentum,
    epsilon=model.bn_epsilon,
    axis_name=axis_name,
  )


def build_model(spec: RunSpec, num_classes: int, norm):
  """The spec's model; with compute_dtype bfloat16 it computes in bf16, params stay f32."""
  model = spec.model
  options = dict(model.model_options)
  if model.compute_dtype != "float32":
    options.setdefault("dtype", jnp.dtype(model.compute_dtype))
  return models.get_model(model.model, num_classes, norm=norm, **options)


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(state key, white-noise key): parameters, dropout and mult noise; the optimizer's noise."""
  state_key, noise_key = jax.random.split(jax.random.key(seed))
  return state_key, noise_key


def run_optimizer(plan: RunPlan, noise_key: jax.Array, values: Mapping[str, Any] | None = None):
  """The plan's optimizer chain with its white-noise (alpha, gamma).

  ``values``: a population member's grid values (``population_grid.py``),
  which replace the plan's.
  """
  values = values or {}
  member = population_grid.member_plan(plan, values)
  return make_optimizer(member, noise_key, population_grid.white_noise(plan, values))


def _plan_arguments(plan: RunPlan, tx) -> dict[str, Any]:
  """The step arguments that follow the plan's hyperparameters."""
  return {
    "tx": tx,
    "learning_rate": lr_schedule(plan),
    "noise_variance": plan.noise_variance,
    "lr_scale": distance_drop_scale(plan),
  }


def step_arguments(spec: RunSpec, model, tx) -> dict[str, Any]:
  """The static keyword arguments of ``step.train_step`` for this run."""
  return {
    "model": model,
    "skip_nonfinite": spec.settings.nonfinite_policy == "skip",
    **_plan_arguments(spec.plan, tx),
  }


def member_arguments(spec: RunSpec, values: Mapping[str, jax.Array]) -> dict[str, Any]:
  """The step arguments of a population member with grid ``values`` (traced in the step).

  The optimizer, the logged learning-rate schedule and the multiplicative
  noise's variance are derived from the member's values as a single run
  derives them from its spec. The white noise's key is the optimizer
  state's (each member's own), so the key the chain is built with is unused.
  """
  member = population_grid.member_plan(spec.plan, values)
  tx = run_optimizer(spec.plan, run_keys(spec.settings.seed)[1], values)
  return _plan_arguments(member, tx)


def _initial(init: Callable, abstract: bool, sharding, *args):
  """``init(*args)`` placed by ``sharding``; ``abstract``: its shapes only, nothing allocated."""
  if abstract:
    shapes = jax.eval_shape(init, *args)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
  return jax.device_put(init(*args), sharding)


@dataclasses.dataclass(frozen=True)
class RunSetup:
  """What a run trains: its model, optimizer, initial state and step arguments."""

  model: Any
  tx: optax.GradientTransformation
  state: TrainState  # replicated on the mesh
  step_args: dict[str, Any]  # static keyword arguments of step.train_step
  # The partial last batch's step arguments where its ghost batches differ.
  partial_step_args: dict[str, Any] | None = None
  # A population's grid values, config key -> [P] (replicated; {} without a
  # grid), the step's third argument; None for a single run.
  hyperparameters: dict[str, jax.Array] | None = None
  # values -> the step arguments they set (``member_arguments``); None without a grid.
  member_arguments: Callable[[Mapping[str, jax.Array]], dict[str, Any]] | None = None

  def step_args_at(self, batch_size: int, plan: RunPlan) -> dict[str, Any]:
    """The step arguments of a step at ``batch_size``: the partial batch's, or the run's."""
    partial = plan.partial_batch_size
    if partial and batch_size == partial and self.partial_step_args is not None:
      return self.partial_step_args
    return self.step_args


def set_up_run(
  spec: RunSpec,
  mesh: Mesh,
  num_classes: int,
  input_shape: tuple[int, ...],
  *,
  norm: Callable | None = None,
  seed: int | None = None,
  seeds: tuple[int, ...] | None = None,
  grid: Mapping[str, jax.Array] | None = None,
  abstract: bool = False,
) -> RunSetup:
  """Builds the model (norm layer: the plan's, unless given), optimizer and initial state.

  Args:
    spec: the resolved run (``spec.resolve``).
    mesh: the run's mesh; the state is replicated on it (a population's
      split over its members axis, ``parallel.state_sharding``).
    num_classes: classes of the dataset.
    input_shape: one example's shape.
    norm: a norm-layer constructor replacing the plan's GhostBatchNorm.
    seed: the run's seed (None: the spec's).
    seeds: a population's seeds: the state gets a leading member axis, member
      i initialized as the single run of ``seeds[i]`` (``population.py``).
    grid: with ``seeds``, each member's grid values, config key -> ``[P]``
      (``population_grid.Population.arrays``): member i is the single run of
      ``seeds[i]`` with these values.
    abstract: the state and grid values as ``jax.ShapeDtypeStruct`` leaves
      (with the shardings the real ones get), nothing allocated: enough to compile the
      run's calls and measure their memory (``population_groups.py``).

  Returns:
    A :class:`RunSetup`.
  """
  plan = spec.plan
  norm = norm_layer(spec, axis_name=AXIS) if norm is None else norm
  model = build_model(spec, num_classes, norm)
  state_key, noise_key = run_keys(spec.settings.seed if seed is None else seed)
  tx = run_optimizer(plan, noise_key)
  example = jnp.zeros((1, *input_shape), jnp.float32)
  hyperparameters = member_args = None
  if seeds is not None:
    # The optimizer's update reads its noise key from the state, so one tx
    # serves every member; each member's init gets its own keys (and values).
    keys = [run_keys(s) for s in seeds]
    state_keys, noise_keys = (jnp.stack([k[i] for k in keys]) for i in (0, 1))
    member_init = lambda key, noise, values: create_train_state(  # noqa: E731
      model, run_optimizer(plan, noise, values), example, key
    )
    split = parallel.state_sharding(mesh, members=True)
    init = jax.jit(jax.vmap(member_init), out_shardings=split)
    values = {k: jnp.asarray(v, jnp.float32) for k, v in (grid or {}).items()}
    state = _initial(init, abstract, split, state_keys, noise_keys, values)
    hyperparameters = _initial(lambda v: v, abstract, split, values)
    if values:
      member_args = functools.partial(member_arguments, spec)
  else:
    init = jax.jit(
      lambda key: create_train_state(model, tx, example, key),
      out_shardings=parallel.replicated(mesh),
    )
    state = _initial(init, abstract, parallel.replicated(mesh), state_key)
  step_args = step_arguments(spec, model, tx)
  partial = plan.partial_batch_size
  partial_args = None
  if partial and plan.ghost_batch_size_at(partial) != plan.ghost_batch_size:
    # The same parameters, normalized in the partial batch's ghost batches.
    partial_norm = functools.partial(norm, ghost_batch_size=plan.ghost_batch_size_at(partial))
    partial_model = build_model(spec, num_classes, partial_norm)
    partial_args = step_arguments(spec, partial_model, tx)
  return RunSetup(model, tx, state, step_args, partial_args, hyperparameters, member_args)
