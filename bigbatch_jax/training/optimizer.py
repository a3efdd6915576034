"""The optimizer chain a run plan asks for, and the learning rate it applies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from bigbatch_jax import transforms
from bigbatch_jax.regimes import gradual_warmup, regime_optimizer_parts
from bigbatch_jax.training.plan import RunPlan


def make_optimizer(
  plan: RunPlan, noise_key: jax.Array, white_noise: tuple[float, float] = (1e-5, 0.55)
) -> optax.GradientTransformation:
  """The optimizer chain of the plan.

  clip -> white noise -> weight decay -> momentum SGD on the base schedule ->
  scale by (B / B_base)**p, then optionally warmup, then distance drops. "lars"/"lamb" replace
  weight decay and momentum SGD (``regimes.regime_optimizer_parts``); the
  momentum restart wraps them. Clipping and noise act on the
  raw gradient, weight decay is added to the gradient before momentum (as
  torch.optim.SGD in the bigBatch code), and the batch-size scaling
  multiplies the whole step, which equals scaling the learning rate.

  Args:
    plan: the run plan.
    noise_key: a typed key for the white noise (replicated on all devices).
    white_noise: (alpha, gamma) of the decaying white noise.

  Returns:
    An ``optax.GradientTransformation``.
  """
  parts: list[Any] = []
  if plan.clip_norm is not None:
    if plan.clip_steps is None:
      parts.append(optax.clip_by_global_norm(plan.clip_norm))
    else:
      parts.append(transforms.clip_by_global_norm_during(plan.clip_norm, plan.clip_steps))
  if plan.variant.white_noise:
    alpha, gamma = white_noise
    parts.append(transforms.add_decaying_noise(noise_key, alpha, gamma))
  regime = plan.regime
  # Momentum SGD (or "lars"/"lamb") on the base schedule.
  descent = regime_optimizer_parts(
    regime,
    regime.schedule(plan.steps_per_epoch),
    plan.variant.optimizer,
    trust_coefficient=plan.lars_trust_coefficient,
  )
  if plan.momentum_restart_steps:
    # The reference code's new SGD every epoch.
    descent = [transforms.restart_momentum_at(optax.chain(*descent), plan.momentum_restart_steps)]
  parts.extend(descent)
  parts.append(transforms.scale_by_batch_size(plan.lr_batch_size(), plan.lr_base, plan.lr_rule))
  if plan.warmup_steps:
    # Goyal et al.'s ramp from the base to the scaled rate.
    parts.append(optax.scale_by_schedule(gradual_warmup(plan.lr_scale, plan.warmup_steps)))
  if plan.drop_distances:
    # Last in the chain: distance_drop_scale reads its state there.
    parts.append(transforms.scale_by_distance_drops(plan.drop_distances, regime.drop_factor))
  return optax.chain(*parts)


def distance_drop_scale(plan: RunPlan) -> Callable[[optax.OptState], jax.Array] | None:
  """opt_state -> the "dist" drops' current factor on the learning rate; None without "dist".

  The step multiplies the scheduled learning rate it logs by this.
  """
  if not plan.drop_distances:
    return None
  return lambda opt_state: opt_state[-1].scale
