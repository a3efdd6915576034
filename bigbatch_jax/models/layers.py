"""Shared pieces of the model zoo: the default norm, initializers, layer helpers.

The bigBatch reference models (github.com/eladhoffer/bigBatch, ``models/``)
are PyTorch modules. To train the same functions from the same starting
distribution, the Flax models here reproduce PyTorch's defaults where the
reference relies on them:

* ``nn.BatchNorm2d``/``nn.BatchNorm1d`` defaults (momentum 0.1, eps 1e-5):
  PyTorch's momentum is the weight of the *new* batch, Flax's the weight of
  the *old* running value, so PyTorch 0.1 is Flax 0.9.
* ``nn.Linear``/``nn.Conv2d`` default initialization
  (``kaiming_uniform_(a=sqrt(5))``): weights and biases uniform in
  ``±1/sqrt(fan_in)``.
* The ResNet files' ``init_model``: conv weights normal with standard
  deviation ``sqrt(2 / (k*k*out_channels))`` (He et al. 2015, fan-out mode).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

# A module constructor such as ``nn.BatchNorm`` or a ``functools.partial`` of
# one; the models call it with ``use_running_average``, ``dtype`` and ``name``.
NormFactory = Callable[..., nn.Module]
Dtype = Any
Initializer = Callable[..., jax.Array]

torch_batch_norm: NormFactory = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
"""``nn.BatchNorm`` with PyTorch's defaults (momentum 0.1 == Flax 0.9, eps 1e-5).

The default ``norm`` of every model: the bigBatch reference code trains with
PyTorch's default batch norm, whereas bare ``nn.BatchNorm`` would average its
running statistics ten times more slowly (momentum 0.99).
"""

# PyTorch's kaiming_uniform_(a=sqrt(5)) is uniform with variance 1/(3 fan_in).
torch_kernel_init: Initializer = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# bigBatch models/resnet.py and models/wide_resnet.py, init_model(): conv
# weights ~ N(0, 2 / (k*k*out_channels)). Flax's fan_out of a (kh, kw, in,
# out) kernel is kh*kw*out, the same n.
he_normal_fan_out: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default bias initialization: uniform in ``±1/sqrt(fan_in)``.

  Flax bias initializers only see the bias shape, so the fan-in of the layer
  is bound here.

  Args:
    fan_in: number of inputs of one output unit (in_features, or
      kh * kw * in_channels for a convolution).

  Returns:
    A Flax initializer ``(key, shape, dtype) -> array``.
  """
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _torch_layer(
  layer: Callable[..., nn.Module],
  x: jax.Array,
  fan_in: int,
  *,
  kernel_init: Initializer = torch_kernel_init,
  **kwargs: Any,
) -> jax.Array:
  """Applies ``layer(**kwargs)`` with PyTorch's default bias init for ``fan_in`` inputs."""
  return layer(kernel_init=kernel_init, bias_init=torch_bias_init(fan_in), **kwargs)(x)


def torch_dense(
  x: jax.Array, features: int, *, name: str, dtype: Dtype, use_bias: bool = True
) -> jax.Array:
  """Applies a Dense layer initialized like PyTorch's ``nn.Linear``.

  Must be called inside a ``@nn.compact`` method; the layer becomes a child
  of that module under ``name``.
  """
  return _torch_layer(
    nn.Dense, x, x.shape[-1], features=features, use_bias=use_bias, dtype=dtype, name=name
  )


def torch_conv(
  x: jax.Array,
  features: int,
  kernel_size: int,
  *,
  name: str,
  dtype: Dtype,
  stride: int = 1,
  padding: int = 0,
  use_bias: bool = True,
  kernel_init: Initializer = torch_kernel_init,
) -> jax.Array:
  """Applies a square convolution with PyTorch's ``nn.Conv2d`` semantics.

  Padding is symmetric and explicit, as in PyTorch: Flax's ``"SAME"`` pads
  a strided convolution asymmetrically and would shift the sampling grid.
  The default initialization is PyTorch's; the ResNets pass
  ``he_normal_fan_out`` instead.
  """
  return _torch_layer(
    nn.Conv,
    x,
    kernel_size * kernel_size * x.shape[-1],
    kernel_init=kernel_init,
    features=features,
    kernel_size=(kernel_size, kernel_size),
    strides=(stride, stride),
    padding=((padding, padding), (padding, padding)),
    use_bias=use_bias,
    dtype=dtype,
    name=name,
  )


def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
  """``nn.MaxPool2d(window, stride, padding)``: padded cells count as -inf."""
  return nn.max_pool(
    x,
    (window, window),
    strides=(stride, stride),
    padding=((padding, padding), (padding, padding)),
  )


def flatten(x: jax.Array) -> jax.Array:
  """Flattens all but the batch axis (PyTorch ``x.view(x.size(0), -1)``).

  The order of the features is NHWC's (H, W, C) rather than PyTorch's
  (C, H, W); a fixed permutation of the next layer's inputs, so the function
  class and the parameter count are the same.
  """
  return x.reshape(x.shape[0], -1)


def check_image_input(x: jax.Array, model: str) -> None:
  """Raises a ValueError unless ``x`` is an NHWC batch of images."""
  if x.ndim != 4:
    raise ValueError(
      f"{model} expects NHWC images of shape (batch, height, width, channels); "
      f"got an input of shape {x.shape}. Add the channel axis (x[..., None]) for "
      "single-channel images."
    )


legacy_torch_bn_scale_init: Initializer = nn.initializers.uniform(scale=1.0)
"""Batch-norm scale drawn from U(0, 1): PyTorch's default before 1.0.

PyTorch's ``_BatchNorm.reset_parameters`` called ``weight.data.uniform_()``
until 1.0 (pytorch/pytorch#12259 changed it to ones). The bigBatch reference
code ran on such a PyTorch, so its batch-norm layers started with random
scales in [0, 1). Pass as the norm layer's ``scale_init``, e.g.
``functools.partial(GhostBatchNorm, scale_init=legacy_torch_bn_scale_init)``.
"""


class ZooModel(nn.Module):
  """What every model of the zoo has: its classes, the injected norm layer, the dtype.

  Subclasses add their architecture's fields and write ``__call__(x, train)``
  with :meth:`normalize` for every norm layer and :meth:`logits` for the
  classifier.

  Attributes:
    num_classes: number of outputs (logits).
    norm: normalization constructor, called as
      ``norm(use_running_average=not train, dtype=dtype, name=...)``; every
      norm layer's name starts with ``bn``.
    dtype: computation dtype; parameters stay float32.
  """

  num_classes: int
  norm: NormFactory = torch_batch_norm
  dtype: Dtype = jnp.float32

  def normalize(self, x: jax.Array, train: bool, name: str) -> jax.Array:
    """Applies the norm layer ``name``: batch statistics in training, running ones otherwise."""
    return self.norm(use_running_average=not train, dtype=self.dtype, name=name)(x)

  def hidden_dense(
    self,
    x: jax.Array,
    features: int,
    train: bool,
    *,
    index: int,
    norm_index: int,
    use_bias: bool = False,
    dropout_rate: float | None = None,
  ) -> jax.Array:
    """Dense ``fc<index>`` -> norm ``bn<norm_index>`` -> ReLU [-> dropout].

    The hidden layer of F1 (with bias, no dropout), C1/C3 and AlexNet (no
    bias, a norm follows; dropout from the ``'dropout'`` rng in training).
    """
    x = torch_dense(x, features, use_bias=use_bias, name=f"fc{index}", dtype=self.dtype)
    x = nn.relu(self.normalize(x, train, f"bn{norm_index}"))
    if dropout_rate is not None:
      x = nn.Dropout(dropout_rate, deterministic=not train)(x)
    return x

  def logits(self, x: jax.Array, name: str) -> jax.Array:
    """The classifier ``name``, a PyTorch-initialized Dense, with float32 logits.

    float32 so that a bf16 model's loss is computed in full precision.
    """
    return torch_dense(x, self.num_classes, name=name, dtype=self.dtype).astype(jnp.float32)


class NormedHeadModel(ZooModel):
  """A zoo model whose classifier has hidden layers with norm and dropout (C1/C3, AlexNet).

  Keskar et al.'s C1 and the batch-norm AlexNet of the reference end alike:
  flatten, then per hidden layer Dense (no bias) -> norm -> ReLU -> dropout,
  then the Dense classifier.

  Attributes:
    dropout_rate: dropout probability of the hidden Dense layers (needs a
      ``'dropout'`` rng when ``train`` is True).
  """

  dropout_rate: float = 0.5

  def head(
    self, x: jax.Array, widths: tuple[int, ...], train: bool, *, norm_offset: int
  ) -> jax.Array:
    """flatten -> hidden layers ``fc<i>``/``bn<norm_offset + i>`` of ``widths`` -> logits."""
    x = flatten(x)
    for i, width in enumerate(widths, 1):
      x = self.hidden_dense(
        x, width, train, index=i, norm_index=norm_offset + i, dropout_rate=self.dropout_rate
      )
    return self.logits(x, f"fc{len(widths) + 1}")
