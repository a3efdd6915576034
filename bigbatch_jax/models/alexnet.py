"""AlexNet, "one weird trick" variant with batch norm (Krizhevsky 2014)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from bigbatch_jax.models.layers import NormedHeadModel, check_image_input, max_pool, torch_conv


class AlexNet(NormedHeadModel):
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

  The fields are those of :class:`NormedHeadModel` (num_classes, norm,
  dtype, dropout_rate); the norm layers are ``bn1`` to ``bn7``.
  """

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    def norm(y: jax.Array, index: int) -> jax.Array:
      return self.normalize(y, train, f"bn{index}")

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
    return self.head(x, (4096, 4096), train, norm_offset=5)
