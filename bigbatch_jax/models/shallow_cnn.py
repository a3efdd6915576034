"""C1 and C3: the shallow convolutional networks of Keskar et al. (2017)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from bigbatch_jax.models.layers import NormedHeadModel, check_image_input, max_pool, torch_conv


class C1(NormedHeadModel):
  """Keskar et al.'s shallow CIFAR network, as in bigBatch ``models/cifar_shallow.py``.

  Layers, in the reference's order (note: pooling comes *before* the norm)::

      conv 5x5 64 (pad 2, no bias) -> maxpool 3/2 -> norm -> ReLU
      conv 5x5 64 (pad 2, no bias) -> maxpool 3/2 -> norm -> ReLU
      flatten (64*7*7 for 32x32 inputs)
      Dense 384 (no bias) -> norm -> ReLU -> dropout 0.5
      Dense 192 (no bias) -> norm -> ReLU -> dropout 0.5
      Dense num_classes

  C1 is the CIFAR-10 model and C3 (the same network) the CIFAR-100 one;
  Hoffer et al. (2017), Table 1 (87.80% and 61.25% with batch 128).

  The fields are those of :class:`NormedHeadModel` (num_classes, norm,
  dtype, dropout_rate); the norm layers are ``bn1`` to ``bn4``.
  """

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    check_image_input(x, type(self).__name__)
    x = jnp.asarray(x, self.dtype)
    for i in (1, 2):
      x = torch_conv(x, 64, 5, padding=2, use_bias=False, name=f"conv{i}", dtype=self.dtype)
      x = nn.relu(self.normalize(max_pool(x, 3, 2), train, f"bn{i}"))
    return self.head(x, (384, 192), train, norm_offset=2)


class C3(C1):
  """Keskar et al.'s C3: the C1 network trained on CIFAR-100 (100 classes).

  bigBatch ``models/cifar_shallow.py`` builds both from the same class
  (``cifar10_shallow`` and ``cifar100_shallow``); see :class:`C1`.
  """
