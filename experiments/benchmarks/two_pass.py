"""GhostBatchNorm as it was before its one-pass normalization: the benchmark's "before" row.

GhostBatchNorm normalizes ghost batches with ``y = x * mul + shift`` (the
statistics folded into a per-ghost affine map first). This subclass puts
back what it did before, flax's ``_normalize`` on the ghost view:
``(x - mean) * (scale * rsqrt(var + eps)) + bias``. Differentiated, that
keeps ``x - mean`` and the scaled product as full-size residuals; the step
benchmark times both side by side so the difference stays measured.
"""

from __future__ import annotations

from bigbatch_jax.ghost_batch_norm import GhostBatchNorm, normalize


class TwoPassGhostBatchNorm(GhostBatchNorm):
  """GhostBatchNorm whose ghost path calls flax's ``_normalize`` (the previous code)."""

  def _normalize_ghosts(self, ghosts, mean, var, scale, bias, feature_axes):
    reduction_axes = tuple(i for i in range(1, ghosts.ndim) if i not in feature_axes)
    return normalize(
      ghosts, mean, var, scale, bias, reduction_axes, feature_axes, self.dtype, self.epsilon
    )
