"""Wide residual network for CIFAR, as in bigBatch ``models/wide_resnet.py``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from bigbatch_jax.models.layers import ZooModel, check_image_input
from bigbatch_jax.models.resnet import cifar_resnet_features


class WideResNet(ZooModel):
  """WRN-depth-k (Zagoruyko & Komodakis 2016) in bigBatch's ``WResNet_cifar10`` form.

  Hoffer et al. (2017), Table 1 train WRN-16-4 on CIFAR-100 (73.70% with
  batch 256). bigBatch's version differs from Zagoruyko's: it is the CIFAR
  ResNet with every width multiplied by k, i.e. post-activation basic
  blocks (conv -> norm -> ReLU, not Zagoruyko's pre-activation), a first
  convolution with 16k channels (not 16), projection shortcuts only where
  the stride changes, and no dropout. WRN-16-4 has 2,800,804 parameters
  with 100 classes here against Zagoruyko's published 2.7M.

  Attributes:
    num_classes, norm, dtype: as :class:`ZooModel`.
    depth: 6n+4 (Zagoruyko's count; bigBatch's int((depth-2)/6) gives the
      same n), so n = 2 basic blocks per stage for depth 16.
    widen_factor: k, the width multiplier of the 16/32/64 channels.
  """

  depth: int = 16
  widen_factor: int = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.depth < 10 or (self.depth - 4) % 6:
      raise ValueError(
        f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40); got depth={self.depth}."
      )
    if self.widen_factor < 1:
      raise ValueError(f"WideResNet widen_factor must be >= 1; got {self.widen_factor}.")
    check_image_input(x, type(self).__name__)
    x = cifar_resnet_features(
      jnp.asarray(x, self.dtype),
      blocks_per_stage=(self.depth - 4) // 6,
      width=16 * self.widen_factor,
      norm=self.norm,
      dtype=self.dtype,
      train=train,
    )
    return self.logits(x, "fc")
