"""C1 and C3: the shallow convolutional networks of Keskar et al. (2017)."""

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


class C1(nn.Module):
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
    check_image_input(x, type(self).__name__)
    x = jnp.asarray(x, self.dtype)
    for i in (1, 2):
      x = torch_conv(x, 64, 5, padding=2, use_bias=False, name=f"conv{i}", dtype=self.dtype)
      x = max_pool(x, 3, 2)
      x = self.norm(use_running_average=not train, dtype=self.dtype, name=f"bn{i}")(x)
      x = nn.relu(x)
    x = flatten(x)
    for i, width in ((1, 384), (2, 192)):
      x = torch_dense(x, width, use_bias=False, name=f"fc{i}", dtype=self.dtype)
      x = self.norm(use_running_average=not train, dtype=self.dtype, name=f"bn{i + 2}")(x)
      x = nn.relu(x)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = torch_dense(x, self.num_classes, name="fc3", dtype=self.dtype)
    # Logits in float32 so that a bf16 model's loss is computed in full precision.
    return x.astype(jnp.float32)


class C3(C1):
  """Keskar et al.'s C3: the C1 network trained on CIFAR-100 (100 classes).

  bigBatch ``models/cifar_shallow.py`` builds both from the same class
  (``cifar10_shallow`` and ``cifar100_shallow``); see :class:`C1`.
  """
