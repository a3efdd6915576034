"""The training state: one pytree holding everything a run needs to resume."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Parameters, statistics, optimizer state, w0, key and step of a run.

  Attributes:
    step: updates done so far (int32 scalar).
    params: model parameters.
    batch_stats: running batch-norm statistics.
    opt_state: optimizer state (incl. the white-noise key, if any).
    initial_params: w0, for the weight distance ||w_t - w0|| (Hoffer eq. 4).
    key: typed key; folded with the step for dropout and multiplicative noise.
    nonfinite_step: the first step whose loss or gradient was not finite, or
      -1; checked on the host at logging steps.
    nonfinite_kind: what was not finite at that step: 1 the loss, 2 the
      gradient, 3 both.
    skipped_steps: updates skipped for a non-finite loss or gradient (the
      "skip" policy).
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  initial_params: Any
  key: jax.Array
  nonfinite_step: jax.Array
  nonfinite_kind: jax.Array
  skipped_steps: jax.Array


def create_train_state(
  model, tx: optax.GradientTransformation, example_x: jax.Array, key: jax.Array
) -> TrainState:
  """Initializes the model and optimizer (jit this; shapes only need ``example_x``)."""
  init_key, run_key = jax.random.split(key)
  variables = model.init(init_key, example_x, train=False)
  params = variables["params"]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=tx.init(params),
    # A copy: the state is donated to the step, and two leaves sharing one
    # buffer would be donated twice.
    initial_params=jax.tree.map(jnp.copy, params),
    key=run_key,
    nonfinite_step=jnp.full((), -1, jnp.int32),
    nonfinite_kind=jnp.zeros((), jnp.int32),
    skipped_steps=jnp.zeros((), jnp.int32),
  )
