"""F1: the fully connected MNIST network of Keskar et al. (2017)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from bigbatch_jax.models.layers import ZooModel, flatten


class F1(ZooModel):
  """Keskar et al.'s F1 (784-512x5-10), as in bigBatch ``models/mnist_f1.py``.

  The input is flattened, then ``depth`` times Dense(hidden) -> norm -> ReLU,
  then Dense(num_classes). As in the reference, the hidden Dense layers keep
  their bias although a batch norm follows, and there is no dropout. Hoffer
  et al. (2017), section 6 and Table 1 (MNIST, 98.27% with batch 128).

  Any input shape works: MNIST images (N, 28, 28, 1) and MNIST-1D vectors
  (N, 40) are both flattened to (N, features).

  Attributes:
    num_classes, norm, dtype: as :class:`ZooModel`; the norm layers are
      ``bn1`` to ``bn<depth>``.
    hidden: width of the hidden layers (512 in the paper).
    depth: number of hidden layers (5 in the paper).
  """

  hidden: int = 512
  depth: int = 5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = flatten(jnp.asarray(x, self.dtype))
    for i in range(1, self.depth + 1):
      x = self.hidden_dense(x, self.hidden, train, index=i, norm_index=i, use_bias=True)
    return self.logits(x, f"fc{self.depth + 1}")
