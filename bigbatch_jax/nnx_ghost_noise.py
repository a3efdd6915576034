"""Ghost Noise Injection for Flax NNX: ``GhostNoiseBatchNorm``.

A thin front end over :func:`bigbatch_jax.ghost_noise.ghost_noise_train` (the
whole-batch statistics, the ghost batches drawn with replacement and the
noise), which the linen ``GhostNoiseBatchNorm`` calls too; the math and the
readings chosen from the paper and its code are in :mod:`bigbatch_jax.ghost_noise`.
:func:`bigbatch_jax.nnx.ghostify` with ``ghost_noise=rngs`` converts a model's
batch norms to this layer.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> from flax import nnx
  >>> from bigbatch_jax import nnx as bnnx
  >>> norm = bnnx.GhostNoiseBatchNorm(3, ghost_batch_size=4, rngs=nnx.Rngs(0, ghost_noise=1))
  >>> y = norm(jax.random.normal(jax.random.key(0), (16, 3)))  # training: noise of 4-example ghosts
  >>> norm.eval()
  >>> norm(jnp.ones((1, 3))).shape  # running statistics, as nnx.BatchNorm
  (1, 3)
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from bigbatch_jax._nnx_batch_norm import (
  batch_norm_inputs,
  normalize_by_running_average,
  update_running_average,
  use_running_average_of,
)
from bigbatch_jax.ghost_batches import GhostOptions
from bigbatch_jax.ghost_noise import (
  NOISE_EPSILON,
  RNG_COLLECTION,
  check_noise_options,
  ghost_noise_train,
)


class GhostNoiseBatchNorm(nnx.BatchNorm):
  """Batch norm with Ghost Noise Injection; a drop-in for ``flax.nnx.BatchNorm``.

  Kosson, Fan & Jaggi (sections 3-4): in training the input is normalized with
  the whole batch's statistics, then each example gets the shift and scale of
  a ghost batch of ``ghost_batch_size`` examples drawn with replacement from
  the batch (:mod:`bigbatch_jax.ghost_noise`); the running statistics are the
  whole batch's, one moving-average step per call. With ``.eval()`` it is
  ``nnx.BatchNorm``, and so is training with ``ghost_batch_size=None``.

  It is an ``nnx.BatchNorm``: the same constructor arguments and defaults, the
  ``nnx.Param`` ``scale``/``bias`` and ``nnx.BatchStat`` ``mean``/``var``,
  ``.train()``/``.eval()``. The noise's keys come from the ``rngs`` stream
  named ``rng_collection`` (``"ghost_noise"``; an ``nnx.Rngs`` without it
  falls back to its default stream), held by the layer and advanced at each
  training call, or from a ``rngs`` key given to the call. Under data
  parallelism the layer's state (so its key) must be replicated: the ghost
  batches are drawn from the global batch, gathered over ``axis_name``.

  Args:
    num_features: the number of input features.
    ghost_batch_size: the noise's equivalent batch size N (>= 2), or None for
      batch norm without noise.
    ghost_draws: ``"per_ghost"`` (one draw per N consecutive examples) or
      ``"per_example"`` (one draw per example, as the authors' code).
    noise_epsilon: added to both variances of the noise's scale ratio.
    ghost_variance: how each draw's variance is computed (as Ghost BN's).
    rng_collection: the name of the noise's rng stream.
    rngs: the ``nnx.Rngs`` of the parameters and of the noise.
    **kwargs: the other keyword arguments of ``flax.nnx.BatchNorm``
      (``momentum``, ``epsilon``, ``axis_name``, ...), with its defaults.

  References:
    Kosson, Fan, Jaggi 2024, "Ghost Noise for Regularizing Deep Neural
    Networks" (AAAI; arXiv 2305.17205), sections 3 and 4.
  """

  def __init__(
    self,
    num_features: int,
    *,
    ghost_batch_size: int | None = None,
    ghost_draws: str = "per_ghost",
    noise_epsilon: float = NOISE_EPSILON,
    ghost_variance: str = "shifted",
    rng_collection: str = RNG_COLLECTION,
    rngs: nnx.Rngs,
    **kwargs: Any,
  ):
    check_noise_options(ghost_batch_size, ghost_draws, noise_epsilon)
    super().__init__(num_features, rngs=rngs, **kwargs)
    self.ghost_batch_size = ghost_batch_size
    self.ghost_draws = ghost_draws
    self.noise_epsilon = noise_epsilon
    self.ghost_variance = ghost_variance
    self.stats_update = "sequential"  # one whole-batch statistic per call
    self.rng_collection = rng_collection
    # A stream of its own, so that every layer draws different ghost batches.
    self.noise_rngs = nnx.Rngs(**{rng_collection: rngs[rng_collection]()})

  def __call__(self, x, use_running_average: bool | None = None, *, mask=None, rngs=None):
    """Normalizes ``x`` by the whole batch with ghost noise (training) or running statistics.

    Args:
      x: the input; axis 0 is the batch.
      use_running_average: overrides the module's ``use_running_average``.
      mask: optional, broadcastable to ``x`` (batch norm only: an error with
        the noise on).
      rngs: optional key (or ``nnx.Rngs``) of this call's noise, instead of
        the layer's stream.

    Returns:
      The normalized input, of the shape of ``x``.
    """
    use_running_average = use_running_average_of(self, use_running_average)
    if self.ghost_batch_size is not None and self.axis_index_groups is not None:
      raise ValueError(
        "GhostNoiseBatchNorm: axis_index_groups is not supported with ghost noise (the ghost "
        "batches are drawn from the whole axis); pass axis_index_groups=None"
      )
    inputs = batch_norm_inputs(self, x)
    if use_running_average:
      return normalize_by_running_average(self, inputs)
    options = GhostOptions.of(self)
    y, batch_mean, batch_var = ghost_noise_train(
      inputs.x,
      inputs.scale,
      inputs.bias,
      inputs.feature_axes,
      options,
      key=None if self.ghost_batch_size is None else self._key(rngs),
      ghost_draws=self.ghost_draws,
      noise_epsilon=self.noise_epsilon,
      mask=mask,
    )
    update_running_average(self, batch_mean, batch_var, options._replace(ghost_batch_size=None))
    return y

  def _key(self, rngs) -> jax.Array:
    """This call's key: from ``rngs`` if given (a key or Rngs), else the layer's stream."""
    if rngs is None:
      return self.noise_rngs[self.rng_collection]()
    if isinstance(rngs, nnx.Rngs):
      return rngs[self.rng_collection]()
    return rngs


__all__ = ["GhostNoiseBatchNorm"]
