"""Populations: P members of one row trained by one compiled step.

A population is P runs of the same row (model, batch size, ghost size,
regime) that differ in their seed: each member has its own initialization,
example stream, dropout and noise keys. Their states are one ``TrainState``
with a leading member axis, and one step maps the per-member
``step.train_step`` over that axis with ``jax.vmap`` inside the data-parallel
``shard_map``. Members never interact: ``lax.pmean`` and GhostBatchNorm's
gathers run per member (vmap batches the collectives), so member i computes
what the single run of its seed computes, up to the float rounding of
batched matrix products.

Why one step for many seeds: a small-batch step of a small model (F1 at
B=64) is bound by dispatch, not arithmetic; P members in one call share the
dispatch and fill the cores with P-times larger products, and the row
compiles once instead of P times. Hoffer et al.'s Table 1 compares means over
seeds, so more seeds per row at the price of a few makes the comparison
(and its confidence intervals) tighter.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bigbatch_jax.training.step import eval_step, train_step

log = logging.getLogger(__name__)


def _keep(frozen: jax.Array, old, new):
  """``old`` where ``frozen`` else ``new``, leaf by leaf (typed keys through their data)."""

  def pick(a, b):
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      data = jnp.where(frozen, jax.random.key_data(a), jax.random.key_data(b))
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
    return jnp.where(frozen, a, b)

  return jax.tree.map(pick, old, new)


def _member_step(state, batch, values, *, member_arguments=None, **step_args):
  """One member's ``train_step``; a member that diverged keeps its last finite state.

  ``values`` are the member's grid values (traced scalars; ``{}`` without a
  grid), from which ``member_arguments`` builds its optimizer, logged
  learning rate and noise variance (``setup.member_arguments``).

  A member is diverged from the first step whose loss or gradient was not
  finite (``nonfinite_step`` >= 0, the "stop" policy's record): from that
  update on its parameters, statistics and optimizer state stop changing,
  so the others go on and the diverged one is reported with its step.
  """
  if member_arguments is not None:
    step_args = {**step_args, **member_arguments(values)}
  new, metrics = train_step(state, batch, **step_args)
  frozen = new.nonfinite_step >= 0
  new = new.replace(
    params=_keep(frozen, state.params, new.params),
    batch_stats=_keep(frozen, state.batch_stats, new.batch_stats),
    opt_state=_keep(frozen, state.opt_state, new.opt_state),
  )
  return new, metrics


def population_train_step(state, batch, hyperparameters, **step_args):
  """``train_step`` mapped over the members: state and batch ``[P, ...]``, metrics ``[P]``.

  Runs inside ``shard_map`` like ``train_step``; the batch is ``[P, B_local,
  ...]`` (``parallel.batch_spec(members=True)``). ``hyperparameters`` maps
  each grid key to the members' values ``[P]`` (``{}`` for a population of
  seeds): arguments of the compiled step, so one compilation serves any
  values; ``step_args`` then holds ``member_arguments``
  (``setup.RunSetup.member_arguments``).
  """
  member = functools.partial(_member_step, **step_args)
  if batch["y"].shape[0] == 1:
    # One member on this device (two seeds over two devices, say): its own
    # step on the member's slice. XLA's CPU fusions of the vmapped step with a
    # member axis of one ran the +RA row's update (B = 1 024) 1.8x slower.
    new, metrics = member(*jax.tree.map(lambda x: x[0], (state, batch, hyperparameters)))
    return jax.tree.map(lambda x: x[None], (new, metrics))
  return jax.vmap(member)(state, batch, hyperparameters)


def population_train_steps(state, batches, hyperparameters, **step_args):
  """``population_train_step`` over a leading axis of steps (``lax.scan``); metrics ``[L, P]``."""

  def one(state, batch):
    return population_train_step(state, batch, hyperparameters, **step_args)

  return lax.scan(one, state, batches)


def population_eval_step(state, batch, *, model):
  """``eval_step`` of every member on one shared batch: sums ``[P]``."""
  return jax.vmap(functools.partial(eval_step, model=model), in_axes=(0, None))(state, batch)


def member_values(metrics: dict[str, Any], member: int) -> dict[str, Any]:
  """One member's slice of metrics whose last axis is the members'."""
  return {k: np.asarray(v)[..., member] for k, v in metrics.items()}


def take_member(tree: Any, member: int) -> Any:
  """Member ``member`` of a population pytree (a state or a checkpoint's dict)."""
  return jax.tree.map(lambda x: x[member], tree)
