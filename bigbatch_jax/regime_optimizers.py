"""The optimizers that descend along a regime: its momentum SGD, or LARS and LAMB mapped onto it.

:func:`regime_optimizer_parts` gives the transforms of a regime's optimizer
(``"sgd"``, ``"lars"``, ``"lamb"``); :func:`lars_for_regime` and
:func:`lamb_for_regime` map a momentum-SGD regime onto You et al.'s
layer-wise optimizers, with :func:`kernel_mask` choosing the arrays they
adapt. Importable from :mod:`bigbatch_jax.regimes` too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import numpy as np
import optax

if TYPE_CHECKING:
  from bigbatch_jax.regimes import Regime


def is_traced(value) -> bool:
  """True for a value known only under a trace (a population member's hyperparameter)."""
  return isinstance(value, jax.core.Tracer)


def kernel_mask(params: optax.Params) -> optax.Params:
  """True for the arrays LARS and LAMB adapt (kernels, ndim >= 2); False for 1-D ones.

  The 1-D parameters of the models here are biases and the normalization
  layers' scales and biases. Layer-wise adaptation and weight decay leave
  them out, as the reference implementations of LARS (TensorFlow's, used
  for MLPerf ResNet-50: ``exclude_from_layer_adaptation`` and
  ``exclude_from_weight_decay`` of batch norm and biases) and of LAMB (BERT's:
  layer norm and biases) do; optax applies both to every array by default.
  """
  return jax.tree.map(lambda p: np.ndim(p) > 1, params)


def lars_for_regime(
  regime: Regime,
  learning_rate: optax.ScalarOrSchedule,
  *,
  trust_coefficient: float = 0.001,
  eps: float = 0.0,
) -> optax.GradientTransformation:
  """``optax.lars`` with a regime's weight decay and momentum.

  LARS (You et al. 2017, Algorithm 1) updates layer l with the local rate
  lambda_l = eta * ||w_l|| / ||g_l + beta w_l|| times the global rate gamma:
  v <- m v + gamma lambda_l (g_l + beta w_l), w <- w - v. The mapping from a
  momentum-SGD regime:

  * beta, m: the regime's weight decay and momentum (the paper's 5e-4 / 0.9
    are such a regime's); Nesterov as the regime says.
  * gamma: ``learning_rate``, the regime's schedule times the batch-size
    scale. A choice: the paper tunes gamma per batch size with polynomial
    decay and warmup; here LARS runs on the same schedule as the SGD it is
    compared with.
  * eta: ``trust_coefficient`` (the paper's 0.001).
  * "Layer": every kernel (:func:`kernel_mask`) gets its own ratio and the
    weight decay; biases and normalization parameters get neither (plain
    momentum SGD at gamma). The paper's denominator ||g|| + beta ||w|| is
    optax's ||g + beta w||, which equals it when g and w are parallel and is
    never larger. Both are choices the paper leaves open.

  Args:
    regime: the regime whose weight decay, momentum and Nesterov flag are used.
    learning_rate: gamma, a number or a schedule of the update count.
    trust_coefficient: eta.
    eps: added to the trust ratio's denominator.

  Returns:
    An ``optax.GradientTransformation`` (its update needs ``params``).

  References:
    You, Gitman, Ginsburg 2017, "Large Batch Training of Convolutional
    Networks", section 3, Algorithm 1.
  """
  return optax.lars(
    learning_rate,
    weight_decay=regime.weight_decay,
    weight_decay_mask=kernel_mask,
    trust_coefficient=trust_coefficient,
    eps=eps,
    trust_ratio_mask=kernel_mask,
    momentum=regime.momentum,
    nesterov=regime.nesterov,
  )


def lamb_for_regime(
  regime: Regime,
  learning_rate: optax.ScalarOrSchedule,
  *,
  b2: float = 0.999,
  eps: float = 1e-6,
) -> optax.GradientTransformation:
  """``optax.lamb`` with a regime's weight decay and momentum.

  LAMB (You et al. 2019, Algorithm 2) normalizes the Adam step r_t plus
  decoupled weight decay lambda w per layer: w <- w - gamma ||w|| /
  ||r_t + lambda w|| (r_t + lambda w). The mapping from a momentum-SGD regime:

  * beta_1: the regime's momentum (both are 0.9 in the papers); beta_2 and
    eps the paper's 0.999 and 1e-6.
  * lambda: the regime's weight decay, applied decoupled as LAMB does (the
    regime's SGD adds it to the gradient): a choice, equal strength per unit
    of the normalized step.
  * "Layer": every kernel (:func:`kernel_mask`) gets the weight decay and
    the trust ratio; biases and normalization parameters take the plain Adam
    step at gamma (optax.lamb's own ``mask`` covers the weight decay only, so
    the chain is optax.lamb's with the trust ratio masked too).
  * gamma: ``learning_rate``, the regime's schedule times the batch-size
    scale (the paper uses square-root scaling and warmup). A choice: LAMB's
    step is ||w|| * gamma per layer, so an SGD rate tuned for the base batch
    is not LAMB's tuned rate.

  Args:
    regime: the regime whose momentum and weight decay are used.
    learning_rate: gamma, a number or a schedule of the update count.
    b2: Adam's second-moment decay.
    eps: Adam's epsilon.

  Returns:
    An ``optax.GradientTransformation`` (its update needs ``params``).

  References:
    You et al. 2019, "Large Batch Optimization for Deep Learning: Training
    BERT in 76 minutes", section 3, Algorithm 2.
  """
  return optax.chain(
    optax.scale_by_adam(b1=regime.momentum, b2=b2, eps=eps),
    optax.add_decayed_weights(regime.weight_decay, mask=kernel_mask),
    optax.masked(optax.scale_by_trust_ratio(), kernel_mask),
    optax.scale_by_learning_rate(learning_rate),
  )


OPTIMIZERS = ("sgd", "lars", "lamb")


def regime_optimizer_parts(
  regime: Regime,
  learning_rate: optax.ScalarOrSchedule,
  optimizer: str = "sgd",
  *,
  trust_coefficient: float = 0.001,
) -> list[optax.GradientTransformation]:
  """The transforms that descend along a regime, to splat into an ``optax.chain``.

  ``"sgd"`` is the bigBatch reference's ``torch.optim.SGD``: weight decay added
  to the gradient, then heavy-ball momentum on the scheduled rate. ``"lars"``
  and ``"lamb"`` map the regime onto :func:`lars_for_regime` and
  :func:`lamb_for_regime`. A list rather than a chain, so that a caller
  chaining more parts keeps a flat optimizer state.

  Args:
    regime: the regime (momentum, weight decay, Nesterov).
    learning_rate: the rate, usually ``regime.schedule(steps_per_epoch)``.
    optimizer: ``"sgd"``, ``"lars"`` or ``"lamb"``.
    trust_coefficient: LARS's eta.

  Returns:
    A list of ``optax.GradientTransformation``.
  """
  if optimizer == "sgd":
    # A traced weight decay (a population's grid) may be 0 for some members only.
    decays = is_traced(regime.weight_decay) or regime.weight_decay
    parts = [optax.add_decayed_weights(regime.weight_decay)] if decays else []
    sgd = optax.sgd(learning_rate, momentum=regime.momentum or None, nesterov=regime.nesterov)
    return [*parts, sgd]
  if optimizer == "lars":
    return [lars_for_regime(regime, learning_rate, trust_coefficient=trust_coefficient)]
  if optimizer == "lamb":
    return [lamb_for_regime(regime, learning_rate)]
  raise ValueError(f"unknown optimizer {optimizer!r}; valid: {OPTIMIZERS}")
