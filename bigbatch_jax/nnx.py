"""Ghost Batch Normalization for Flax NNX: ``GhostBatchNorm`` and ``ghostify``.

A thin front end over the functions the linen ``GhostBatchNorm`` calls too
(the training path of :mod:`bigbatch_jax.ghost_batch_norm`, the ghost
statistics and normalization of :mod:`bigbatch_jax.ghost_batches`, the
closed-form running update of :mod:`bigbatch_jax.running_statistics`): one
implementation of the math.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> from flax import nnx
  >>> from bigbatch_jax import nnx as bnnx
  >>> norm = bnnx.GhostBatchNorm(3, ghost_batch_size=4, momentum=0.9, rngs=nnx.Rngs(0))
  >>> y = norm(jax.random.normal(jax.random.key(0), (16, 3)))  # training: 4 ghost batches
  >>> norm.eval()
  >>> norm(jnp.ones((1, 3))).shape  # running statistics, any batch size
  (1, 3)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
from flax import linen, nnx

from bigbatch_jax._nnx_batch_norm import (
  batch_norm_inputs,
  normalize_by_running_average,
  update_running_average,
  use_running_average_of,
)
from bigbatch_jax.ghost_batch_norm import ghost_batch_norm_train
from bigbatch_jax.ghost_batches import (
  GhostOptions,
  check_options,
  num_ghost_batches,
)
from bigbatch_jax.ghost_noise import NOISE_EPSILON, RNG_COLLECTION, check_noise_options
from bigbatch_jax.nnx_ghost_noise import GhostNoiseBatchNorm
from bigbatch_jax.running_variance import check_running_variance, running_variance_factor


class GhostBatchNorm(nnx.BatchNorm):
  """Batch normalization over "ghost" batches; a drop-in for ``flax.nnx.BatchNorm``.

  Hoffer et al. (section 4, Algorithm 1): in training the local batch (axis 0)
  is split into contiguous ghost batches of ``ghost_batch_size`` examples, each
  normalized by its own mean and biased variance (one vectorized computation),
  and the running statistics take one moving-average step per ghost batch, in
  order, in closed form (``stats_update="sequential"``) or one step with the
  mean of the ghost statistics (``"mean"``, Keras' rule). With ``.eval()``
  (``use_running_average=True``) only the running statistics are used, at any
  batch size. With ``ghost_batch_size=None`` it is ``nnx.BatchNorm``.

  It is an ``nnx.BatchNorm``: the same constructor arguments and defaults, the
  ``nnx.Param`` ``scale``/``bias`` and ``nnx.BatchStat`` ``mean``/``var``,
  ``.train()``/``.eval()`` and ``nnx.view``. Under ``jax.shard_map`` or
  ``nnx.shard_map`` with ``axis_name``, ghost batches stay inside each device's
  batch and the running statistics of N devices equal those of one device
  holding the global batch (see the linen ``GhostBatchNorm``).

  Args:
    num_features: the number of input features.
    ghost_batch_size: examples per ghost batch (>= 2), or None for plain batch
      normalization.
    stats_update: ``"sequential"`` (the paper's rule) or ``"mean"``.
    ghost_variance: ``"shifted"`` (default), ``"two_pass"`` or ``"one_pass"``;
      see :func:`bigbatch_jax.ghost_batches.ghost_statistics`.
    running_variance: ``"biased"`` (default, flax) or ``"unbiased"``: PyTorch's
      convention, n / (n - 1) times each ghost batch's variance enters the
      running average while the batch is normalized by the biased one.
    use_running_average: as ``flax.nnx.BatchNorm`` (as are the arguments below).
    axis: the feature axis.
    momentum: the decay of the running averages (flax's convention).
    epsilon: added to the variance.
    dtype: the computation dtype.
    param_dtype: the parameters' dtype.
    use_bias: whether to learn a bias.
    use_scale: whether to learn a scale.
    bias_init: the bias initializer.
    scale_init: the scale initializer.
    axis_name: the device axis (under ``shard_map``).
    axis_index_groups: device groups of ``axis_name``.
    use_fast_variance: the variance flax computes without ghost batches.
    promote_dtype: as ``flax.nnx.BatchNorm`` in the flax versions that have it;
      None keeps flax's default (giving it to a flax without it is an error
      naming the installed version). The same for the two below.
    bias_metadata: the bias ``nnx.Param``'s metadata.
    scale_metadata: the scale ``nnx.Param``'s metadata.
    rngs: the ``nnx.Rngs`` of the parameters' initializers.

  References:
    Hoffer, Hubara, Soudry 2017, "Train longer, generalize better", section 4,
    Algorithm 1.
  """

  def __init__(
    self,
    num_features: int,
    *,
    ghost_batch_size: int | None = None,
    stats_update: str = "sequential",
    ghost_variance: str = "shifted",
    running_variance: str = "biased",
    use_running_average: bool | None = False,
    axis: int = -1,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    bias_init: Any = jax.nn.initializers.zeros,
    scale_init: Any = jax.nn.initializers.ones,
    axis_name: str | None = None,
    axis_index_groups: Any = None,
    use_fast_variance: bool = True,
    promote_dtype: Any = None,
    bias_metadata: Mapping[str, Any] | None = None,
    scale_metadata: Mapping[str, Any] | None = None,
    rngs: nnx.Rngs,
  ):
    check_options(ghost_batch_size, stats_update, ghost_variance)
    check_running_variance(running_variance)
    newer = {
      "promote_dtype": promote_dtype,
      "bias_metadata": bias_metadata,
      "scale_metadata": scale_metadata,
    }
    super().__init__(
      num_features,
      use_running_average=use_running_average,
      axis=axis,
      momentum=momentum,
      epsilon=epsilon,
      dtype=dtype,
      param_dtype=param_dtype,
      use_bias=use_bias,
      use_scale=use_scale,
      bias_init=bias_init,
      scale_init=scale_init,
      axis_name=axis_name,
      axis_index_groups=axis_index_groups,
      use_fast_variance=use_fast_variance,
      rngs=rngs,
      **_given_newer_arguments(newer),
    )
    self.ghost_batch_size = ghost_batch_size
    self.stats_update = stats_update
    self.ghost_variance = ghost_variance
    self.running_variance = running_variance

  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    """Normalizes ``x`` with ghost-batch (training) or running (inference) statistics.

    Args:
      x: the input; axis 0 is the batch.
      use_running_average: overrides the module's ``use_running_average``.
      mask: optional, broadcastable to ``x``: which entries count in the
        statistics (as ``nnx.BatchNorm``).

    Returns:
      The normalized input, of the shape of ``x``.
    """
    use_running_average = use_running_average_of(self, use_running_average)
    inputs = batch_norm_inputs(self, x)
    if use_running_average:
      return normalize_by_running_average(self, inputs)

    # The same training path as the linen module: plain batch norm averages
    # over devices like nnx.BatchNorm; ghost batches never cross devices, their
    # running statistics are gathered in order.
    options = GhostOptions.of(self)
    num_ghosts = num_ghost_batches(x.shape[0], self.ghost_batch_size)
    y, batch_mean, batch_var = ghost_batch_norm_train(
      inputs.x,
      inputs.scale,
      inputs.bias,
      inputs.feature_axes,
      options,
      num_ghosts=num_ghosts,
      mask=mask,
    )
    factor = running_variance_factor(x.shape, num_ghosts, inputs.feature_axes, options, mask)
    update_running_average(self, batch_mean, batch_var, options, factor)
    return y


def ghostify(
  model: nnx.Module,
  ghost_batch_size: int | None,
  *,
  stats_update: str = "sequential",
  ghost_variance: str = "shifted",
  ghost_noise: nnx.Rngs | None = None,
  ghost_draws: str = "per_ghost",
  running_variance: str = "biased",
) -> int:
  """Replaces every ``nnx.BatchNorm`` inside ``model`` by a :class:`GhostBatchNorm`, in place.

  With ``ghost_noise`` (an ``nnx.Rngs``: the noise's keys) the replacement is
  a :class:`GhostNoiseBatchNorm` instead (Ghost Noise Injection, Kosson et
  al.): whole-batch normalization with the noise of ghost batches of
  ``ghost_batch_size`` drawn with replacement (``ghost_draws``), each layer its
  own stream forked from ``ghost_noise``.

  Each replacement keeps the batch norm's configuration and its very
  ``scale``/``bias`` parameters and ``mean``/``var`` statistics (the same
  ``nnx.Variable`` objects), so in eval mode the model computes exactly what
  it computed before, and an ``nnx.Optimizer`` built before still holds them;
  in training each layer normalizes ghost batches of ``ghost_batch_size``.
  Batch norms are found anywhere in the graph: nested modules,
  ``nnx.Sequential``, ``nnx.List``/``nnx.Dict`` and lists in ``nnx.data``.
  Existing GhostBatchNorms get the new options (and count as replaced).

  Args:
    model: an NNX module holding at least one ``nnx.BatchNorm``.
    ghost_batch_size: examples per ghost batch (>= 2), or None.
    stats_update: ``"sequential"`` or ``"mean"``.
    ghost_variance: ``"shifted"``, ``"two_pass"`` or ``"one_pass"``.
    running_variance: ``"biased"`` or ``"unbiased"`` (PyTorch's running variance).

  Returns:
    How many batch norms were replaced (or updated).

  Raises:
    TypeError: ``model`` is a flax.linen module, a bare ``nnx.BatchNorm`` (which
      cannot be replaced in place) or not an NNX module.
    ValueError: ``model`` holds no batch norm, or the options are invalid.

  Examples:
    >>> from flax import nnx
    >>> from bigbatch_jax import nnx as bnnx
    >>> rngs = nnx.Rngs(0)
    >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=rngs), nnx.BatchNorm(8, rngs=rngs))
    >>> bnnx.ghostify(model, ghost_batch_size=16)
    1
    >>> type(model.layers[1]).__name__
    'GhostBatchNorm'

  References:
    Hoffer, Hubara, Soudry 2017, "Train longer, generalize better", section 4,
    Algorithm 1.
  """
  check_options(ghost_batch_size, stats_update, ghost_variance)
  check_running_variance(running_variance)
  _check_ghostify_target(model)
  options = {
    "ghost_batch_size": ghost_batch_size,
    "stats_update": stats_update,
    "ghost_variance": ghost_variance,
    "running_variance": running_variance,
  }
  if ghost_noise is not None:
    check_noise_options(ghost_batch_size, ghost_draws, NOISE_EPSILON)
    if running_variance != "biased":
      raise ValueError(
        f"running_variance={running_variance!r} with ghost_noise: GhostNoiseBatchNorm keeps "
        "flax's biased running variance; use running_variance='biased' or ghost_noise=None"
      )
  found = [(p, n) for p, n in nnx.iter_graph(model) if isinstance(n, nnx.BatchNorm)]
  if not found:
    raise ValueError(
      f"ghostify found no nnx.BatchNorm in the {type(model).__name__} it was given, so there "
      "is nothing to replace; build the model with nnx.BatchNorm layers (or put "
      "bigbatch_jax.nnx.GhostBatchNorm in it directly)"
    )
  for path, norm in found:
    if ghost_noise is None:
      ghost = _ghost_of(norm, options)
    else:
      ghost = _noisy_of(norm, ghost_batch_size, ghost_draws, ghost_variance, ghost_noise)
    if path:
      parent = functools.reduce(_child, path[:-1], model)
      if hasattr(type(parent), "__setitem__"):
        parent[path[-1]] = ghost
      else:
        setattr(parent, path[-1], ghost)
  return len(found)


def _check_ghostify_target(model: Any) -> None:
  """Raises, saying what to do, for what ghostify cannot change in place."""
  if isinstance(model, linen.Module):
    raise TypeError(
      f"ghostify changes Flax NNX models; it was given the flax.linen module "
      f"{type(model).__name__}. In linen, use bigbatch_jax.GhostBatchNorm(ghost_batch_size=...) "
      "where the model has nn.BatchNorm"
    )
  if isinstance(model, nnx.BatchNorm) and not isinstance(model, GhostBatchNorm):
    raise TypeError(
      "ghostify replaces the batch norms inside a model, in place; a bare nnx.BatchNorm "
      "cannot replace itself. Build bigbatch_jax.nnx.GhostBatchNorm(num_features, "
      "ghost_batch_size=..., rngs=...) instead"
    )
  if not isinstance(model, nnx.Module):
    raise TypeError(f"ghostify needs a flax.nnx.Module, got {type(model).__name__}: {model!r}")


def _given_newer_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
  """The given ``nnx.BatchNorm`` arguments that older flax versions lack, checked."""
  given = {k: v for k, v in arguments.items() if v is not None}
  known = inspect.signature(nnx.BatchNorm.__init__).parameters
  missing = sorted(set(given) - set(known))
  if missing:
    raise TypeError(
      f"GhostBatchNorm: {missing} need a flax whose nnx.BatchNorm takes them; the installed "
      f"flax {flax.__version__} does not (upgrade flax, or leave them None)"
    )
  return given


def _child(parent: Any, key: Any) -> Any:
  if hasattr(type(parent), "__getitem__") and not isinstance(parent, nnx.Module):
    return parent[key]
  return getattr(parent, key)


def _noisy_of(norm, ghost_batch_size, ghost_draws, ghost_variance, rngs) -> GhostNoiseBatchNorm:
  """A GhostNoiseBatchNorm holding ``norm``'s attributes and its very variables."""
  noisy = GhostNoiseBatchNorm(
    norm.num_features,
    ghost_batch_size=ghost_batch_size,
    ghost_draws=ghost_draws,
    ghost_variance=ghost_variance,
    # The parameters are replaced by norm's below: only the noise's key matters.
    rngs=nnx.Rngs(0, **{RNG_COLLECTION: rngs[RNG_COLLECTION]()}),
  )
  return _copy_attributes(norm, noisy, skip=_NOISE_ATTRIBUTES)


_NOISE_ATTRIBUTES = ("ghost_batch_size", "ghost_draws", "ghost_variance", "noise_rngs")


def _ghost_of(norm: nnx.BatchNorm, options: dict[str, Any]) -> GhostBatchNorm:
  """A GhostBatchNorm holding ``norm``'s attributes and its very variables."""
  if isinstance(norm, GhostBatchNorm):
    for name, value in options.items():
      setattr(norm, name, value)
    return norm
  ghost = GhostBatchNorm(norm.num_features, rngs=nnx.Rngs(0), **options)
  return _copy_attributes(norm, ghost)


def _copy_attributes(norm: nnx.BatchNorm, target: nnx.BatchNorm, skip=()) -> Any:
  """``target`` given ``norm``'s public attributes (its very variables), except ``skip``."""
  for name, value in vars(norm).items():
    if not name.startswith("_") and name not in skip:
      setattr(target, name, value)
  return target


__all__ = ["GhostBatchNorm", "GhostNoiseBatchNorm", "ghostify"]
