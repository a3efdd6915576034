"""VGG with batch normalization for CIFAR (Simonyan & Zisserman 2014)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from bigbatch_jax.models.layers import (
  ZooModel,
  check_image_input,
  flatten,
  max_pool,
  torch_conv,
  torch_dense,
)

# Number of 3x3 convolutions in each of the five stages (configurations A,
# B, D and E of Simonyan & Zisserman, keyed by depth); every stage ends with a
# 2x2 max pool. The same lists as the cfg dict of the reference.
VGG_STAGE_DEPTHS: dict[int, tuple[int, ...]] = {
  11: (1, 1, 2, 2, 2),
  13: (2, 2, 2, 2, 2),
  16: (2, 2, 3, 3, 3),
  19: (2, 2, 4, 4, 4),
}
VGG_STAGE_WIDTHS = (64, 128, 256, 512, 512)


class VGG(ZooModel):
  """CIFAR VGG with batch norm, as in convNet.pytorch ``models/vgg.py`` (class ``VGG``).

  Hoffer et al. (2017), Table 1 train "VGG (Simonyan, 2014)" on CIFAR-10
  (92.30% with batch 128). The bigBatch repository itself ships no VGG
  (its ``models/__init__.py`` imports alexnet, resnet, mnist_f1,
  wide_resnet and cifar_shallow only), so this follows the CIFAR VGG of
  convNet.pytorch, the code base bigBatch is built on; its defaults for
  cifar10 are depth 16 with batch norm:

      [conv 3x3 (pad 1, with bias) -> norm -> ReLU]... with 2x2 max pools
      after each of the 5 stages (32x32 -> 1x1x512)
      flatten -> Dense 4096 -> ReLU -> dropout 0.5
              -> Dense 4096 -> ReLU -> dropout 0.5 -> Dense num_classes

  The classifier has no norm layers, as in the reference. VGG-16 has
  33,646,666 parameters with 10 classes.

  Attributes:
    num_classes, norm, dtype: as :class:`ZooModel`; the norm layers are
      ``bn1`` to ``bn<number of convolutions>``.
    depth: 11, 13, 16 or 19 (a key of ``VGG_STAGE_DEPTHS``).
    dropout_rate: dropout probability in the classifier (needs a
      ``'dropout'`` rng when ``train`` is True).
  """

  depth: int = 16
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.depth not in VGG_STAGE_DEPTHS:
      raise ValueError(
        f"VGG depth must be one of {sorted(VGG_STAGE_DEPTHS)}; got depth={self.depth}."
      )
    check_image_input(x, "VGG")
    x = jnp.asarray(x, self.dtype)
    layer = 0
    for num_convs, width in zip(VGG_STAGE_DEPTHS[self.depth], VGG_STAGE_WIDTHS):
      for _ in range(num_convs):
        layer += 1
        x = torch_conv(x, width, 3, padding=1, name=f"conv{layer}", dtype=self.dtype)
        x = nn.relu(self.normalize(x, train, f"bn{layer}"))
      x = max_pool(x, 2, 2)
    # The reference's AvgPool2d(1, 1) here is the identity; a 32x32 input
    # leaves a 1x1x512 map.
    x = flatten(x)
    for i in (1, 2):
      x = nn.relu(torch_dense(x, 4096, name=f"fc{i}", dtype=self.dtype))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return self.logits(x, "fc3")
