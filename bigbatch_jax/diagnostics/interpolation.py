"""The parametric plot between two minima (Keskar et al. 2017 Fig. 3; Jaiswal & Taura Fig. 2, 6).

theta(a) = (1 - a) theta_S + a theta_L for a in [-1, 2]: a = 0 is the
small-batch solution, a = 1 the large-batch one. A loss that rises steeply
around a = 1 and slowly around a = 0 says the large-batch minimum is the
sharper one (Jaiswal & Taura, section 2.3.2).

Batch normalization: neither run's running statistics belong to an
interpolated network, so they are recomputed on training data at each a
(:func:`recompute_batch_stats`) before evaluating in evaluation mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def interpolate_params(params_s, params_l, alpha):
  """(1 - alpha) * params_s + alpha * params_l, leaf by leaf (jittable in alpha).

  Args:
    params_s: theta_S, the small-batch parameters.
    params_l: theta_L, with the same tree structure.
    alpha: a scalar; 0 gives theta_S, 1 gives theta_L.

  Returns:
    A pytree shaped like ``params_s``.
  """
  if jax.tree.structure(params_s) != jax.tree.structure(params_l):
    raise ValueError(
      "the two parameter sets must have the same tree structure (the same model), got "
      f"{jax.tree.structure(params_s)} and {jax.tree.structure(params_l)}"
    )
  return jax.tree.map(lambda s, large: (1.0 - alpha) * s + alpha * large, params_s, params_l)


def recompute_batch_stats(
  batch_stats_fn: Callable[..., object], params, batches: jax.Array
) -> object:
  """Batch-norm statistics of ``params`` on training batches, averaged without momentum.

  ``batch_stats_fn(params, x)`` returns the statistics of one batch ``x``
  (for a flax model: a train-mode call with ``mutable=["batch_stats"]`` on a
  copy of the model whose norm layers have momentum 0 and no ghost batches,
  which :func:`bigbatch_jax.diagnostics.runs.batch_stats_fn` builds). The
  result is the plain mean over the batches: the mean of the batch means is
  the mean over all their examples; the mean of the (biased) batch variances
  is what a running average would converge to with no drift. Jittable.

  Args:
    batch_stats_fn: (params, x) -> batch-statistics pytree of that batch.
    params: the parameters.
    batches: stacked inputs, shape (num_batches, batch_size, ...).

  Returns:
    The averaged batch-statistics pytree.
  """
  stats = lax.map(lambda x: batch_stats_fn(params, x), batches)
  return jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)


def check_alphas(alphas: Sequence[float]) -> np.ndarray:
  alphas = np.asarray(alphas, np.float64)
  if alphas.ndim != 1 or alphas.size < 2 or not np.all(np.isfinite(alphas)):
    raise ValueError(f"alphas must be a 1-D list of >= 2 finite values, got {alphas!r}")
  return alphas


def interpolation_curve(
  evaluate_fn: Callable[[object], dict], params_s, params_l, alphas: Sequence[float]
) -> dict[str, list[float]]:
  """Evaluates ``evaluate_fn`` along theta(a) = (1 - a) theta_S + a theta_L.

  Args:
    evaluate_fn: params -> dict of scalar metrics (e.g. train/test loss and
      accuracy, recomputing batch statistics first); jit it for speed.
    params_s: theta_S (a = 0).
    params_l: theta_L (a = 1).
    alphas: the a values, e.g. ``np.linspace(-1, 2, 31)`` (Keskar et al.).

  Returns:
    ``{"alpha": [...], metric: [...] for each metric of evaluate_fn}``.
  """
  alphas = check_alphas(alphas)
  curve: dict[str, list[float]] = {"alpha": [float(a) for a in alphas]}
  for a in alphas:
    metrics = jax.device_get(evaluate_fn(interpolate_params(params_s, params_l, jnp.float32(a))))
    for name, value in metrics.items():
      curve.setdefault(name, []).append(float(value))
  return curve
