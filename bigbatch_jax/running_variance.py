"""The running variance batch norm keeps: flax's biased one, or PyTorch's unbiased one.

PyTorch's ``BatchNorm`` normalizes a training batch with its biased variance
but puts n / (n - 1) times it into the running average; flax keeps the biased
one. The bigBatch reference code (Hoffer et al. 2017's) is PyTorch, so its
evaluation uses the unbiased running variance. ``GhostBatchNorm`` (linen and
NNX) takes ``running_variance="biased"`` (default) or ``"unbiased"``.
"""

from __future__ import annotations

from typing import Any

from jax import lax

RUNNING_VARIANCES = ("biased", "unbiased")


def check_running_variance(running_variance: str) -> None:
  """Raises ValueError unless ``running_variance`` is ``"biased"`` or ``"unbiased"``."""
  if running_variance not in RUNNING_VARIANCES:
    raise ValueError(
      f"GhostBatchNorm: unknown running_variance={running_variance!r}; valid values are "
      f"{RUNNING_VARIANCES}"
    )


def running_variance_factor(x_shape, num_ghosts: int, feature_axes, options: Any, mask):
  """n / (n - 1) with ``running_variance="unbiased"`` (n examples per statistic), else None.

  PyTorch's ``BatchNorm`` normalizes with the biased batch variance but puts
  the unbiased one, n / (n - 1) times it, into its running average; flax keeps
  the biased one. n counts the entries each ghost statistic reduces over (the
  whole batch across ``axis_name`` for plain batch norm, whose statistics are
  averaged over devices).

  Args:
    x_shape: the input's shape (axis 0 the batch).
    num_ghosts: the ghost batches it is split into (1 for plain batch norm).
    feature_axes: the axes that keep their own statistics.
    options: a ``GhostOptions`` (``running_variance``, ``ghost_batch_size``,
      ``axis_name``, ``axis_index_groups`` are read).
    mask: the call's mask, or None (a mask is refused with "unbiased").

  Returns:
    The factor (a Python float, or a traced scalar across ``axis_name``), or None.
  """
  check_running_variance(options.running_variance)
  if options.running_variance == "biased":
    return None
  if mask is not None:
    raise ValueError(
      "GhostBatchNorm: running_variance='unbiased' with a mask is not supported (the number "
      "of entries behind each statistic would depend on the mask); use 'biased'"
    )
  features = 1
  for ax in feature_axes:
    features *= x_shape[ax]
  size = 1
  for dim in x_shape:
    size *= dim
  count = size // (num_ghosts * features)
  if count < 2:
    raise ValueError(
      f"GhostBatchNorm: running_variance='unbiased' needs >= 2 entries per statistic; an input "
      f"of shape {tuple(x_shape)} in {num_ghosts} ghost batch(es) gives {count}"
    )
  if options.ghost_batch_size is None and options.axis_name is not None:
    count = count * lax.psum(1, options.axis_name, axis_index_groups=options.axis_index_groups)
  return count / (count - 1)
