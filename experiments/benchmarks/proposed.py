"""A benchmark-local prototype of a proposed GhostBatchNorm change: normalize in one pass.

The library's ghost path calls flax's ``_normalize``, which computes
``(x - mean) * (scale * rsqrt(var + eps)) + bias``. Differentiating that makes
XLA keep ``x - mean`` (and the product) as residuals for the backward pass,
so the forward writes two extra full-size tensors per layer and the backward
reads them back (the profile's "norm fwd sub" and "norm fwd mul" ops).
Folding the statistics into a per-ghost, per-feature affine map first,

    mul = scale * rsqrt(var + eps)          # (ghosts, features), tiny
    y = x * mul + (bias - mean * mul)       # one pass over x,

leaves a single elementwise pass over the activations, which XLA fuses with
the ReLU that follows; the backward needs only ``x`` (already kept for the
statistics). The math is the same up to float rounding (not bit-identical to
``nn.BatchNorm``, so the plain ``ghost_batch_size=None`` path keeps flax's
code). Parameters and variables are unchanged.
"""

from __future__ import annotations

from jax import lax

from bigbatch_jax.ghost_batch_norm import GhostBatchNorm


class FusedGhostBatchNorm(GhostBatchNorm):
  """GhostBatchNorm whose training-time ghost normalization is one affine pass (prototype)."""

  def _normalize(self, x, mean, var, reduction_axes, feature_axes):
    # Only the ghost view (ghosts, ghost_batch_size, features) of a feature-last
    # input takes the fused path; inference and plain batch norm keep flax's.
    if self.ghost_batch_size is None or x.ndim != 3 or tuple(feature_axes) != (2,):
      return super()._normalize(x, mean, var, reduction_axes, feature_axes)
    features = (x.shape[-1],)
    scale = self.param("scale", self.scale_init, features, self.param_dtype)
    bias = self.param("bias", self.bias_init, features, self.param_dtype)
    mean = mean.reshape(x.shape[0], 1, -1)
    var = var.reshape(x.shape[0], 1, -1)
    mul = scale * lax.rsqrt(var + self.epsilon)
    y = x * mul + (bias - mean * mul)
    return y.astype(self.dtype or x.dtype)
