"""AlexNet, "one weird trick" variant with batch norm (Krizhevsky 2014)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from bigbatch_jax.models.layers import (
  Dtype,
  NormFactory,
  check_image_input,
  flatten,
  max_pool,
  torch_batch_norm,
  torch_conv,
  torch_dense,
)


class AlexNet(nn.Module):
  """AlexNet-OWT with batch norm, as convNet.pytorch ``models/alexnet.py`` (``AlexNetOWT_BN``).

  The ImageNet model of Hoffer et al. (2017), Table 2 (57.10% top-1 with
  batch 128). bigBatch's ``models/__init__.py`` imports it from
  ``alexnet.py``, a file that the bigBatch repository inherits from
  convNet.pytorch; this follows convNet.pytorch's earliest version. The
  norm placement is the reference's, irregular as it is (pool before norm
  in the first block, ReLU before norm in the others)::

      conv 11x11/4 64 (pad 2) -> maxpool 3/2 -> norm -> ReLU
      conv 5x5 192 (pad 2)    -> maxpool 3/2 -> ReLU -> norm
      conv 3x3 384 (pad 1)                   -> ReLU -> norm
      conv 3x3 256 (pad 1)                   -> ReLU -> norm
      conv 3x3 256 (pad 1)    -> maxpool 3/2 -> ReLU -> norm
      flatten (256*6*6 for 224x224 inputs)
      Dense 4096 -> norm -> ReLU -> dropout 0.5
      Dense 4096 -> norm -> ReLU -> dropout 0.5
      Dense num_classes

  No convolution or hidden Dense layer has a bias (a norm follows each).
  61,110,184 parameters with 1000 classes.

  Attributes:
    num_classes: number of outputs (logits).
    norm: normalization constructor, called as
      ``norm(use_running_average=..., dtype=..., name="bn<i>")``.
    dtype: computation dtype; parameters stay float32.
    dropout_rate: dropout probability of the two hidden Dense layers
      (needs a ``'dropout'`` rng when ``train`` is True).
  """

  num_classes: int
  norm: NormFactory = torch_batch_norm
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    def norm(y: jax.Array, index: int) -> jax.Array:
      return self.norm(use_running_average=not train, dtype=self.dtype, name=f"bn{index}")(y)

    def conv(y: jax.Array, features: int, kernel: int, index: int, **kw) -> jax.Array:
      return torch_conv(
        y, features, kernel, use_bias=False, name=f"conv{index}", dtype=self.dtype, **kw
      )

    check_image_input(x, "AlexNet")
    x = jnp.asarray(x, self.dtype)
    x = conv(x, 64, 11, 1, stride=4, padding=2)
    x = nn.relu(norm(max_pool(x, 3, 2), 1))
    x = conv(x, 192, 5, 2, padding=2)
    x = norm(nn.relu(max_pool(x, 3, 2)), 2)
    x = norm(nn.relu(conv(x, 384, 3, 3, padding=1)), 3)
    x = norm(nn.relu(conv(x, 256, 3, 4, padding=1)), 4)
    x = conv(x, 256, 3, 5, padding=1)
    x = norm(nn.relu(max_pool(x, 3, 2)), 5)
    x = flatten(x)
    for i in (1, 2):
      x = torch_dense(x, 4096, use_bias=False, name=f"fc{i}", dtype=self.dtype)
      x = nn.relu(norm(x, 5 + i))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = torch_dense(x, self.num_classes, name="fc3", dtype=self.dtype)
    # Logits in float32 so that a bf16 model's loss is computed in full precision.
    return x.astype(jnp.float32)
