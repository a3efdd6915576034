"""Residual networks: CIFAR ResNet-(6n+2) / ResNet-44 and ImageNet ResNet / ResNet-50.

Follows bigBatch ``models/resnet.py`` (He et al. 2016, "Deep residual learning
for image recognition"), itself the torchvision layout: post-activation blocks
(conv -> norm -> ReLU), a 1x1 convolution + norm on the shortcut wherever the
shape changes, the stride of a bottleneck on its 3x3 convolution, and the
``init_model`` initialization (conv weights ~ N(0, 2/(k*k*out_channels)),
norm scale 1 and bias 0, the classifier left at PyTorch's default).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from bigbatch_jax.models.layers import (
  Dtype,
  NormFactory,
  ZooModel,
  check_image_input,
  he_normal_fan_out,
  max_pool,
  torch_conv,
)


def _conv(
  x: jax.Array, features: int, kernel: int, stride: int, *, name: str, dtype: Dtype
) -> jax.Array:
  """A bias-free convolution padded by kernel // 2, initialized as ``init_model`` does.

  Must be called inside a ``@nn.compact`` method (see ``torch_conv``).
  """
  return torch_conv(
    x,
    features,
    kernel,
    stride=stride,
    padding=kernel // 2,
    use_bias=False,
    kernel_init=he_normal_fan_out,
    name=name,
    dtype=dtype,
  )


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (bigBatch ``BasicBlock``).

  The shortcut is the identity, or a strided 1x1 convolution followed by the
  norm (named ``shortcut_conv`` and ``bn_shortcut``) when the stride or the
  number of channels changes: He et al.'s option B, which bigBatch uses for
  the CIFAR networks too (He et al. used the parameter-free option A there).
  """

  planes: int
  stride: int
  norm: NormFactory
  dtype: Dtype

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    def norm(name: str) -> nn.Module:
      return self.norm(use_running_average=not train, dtype=self.dtype, name=name)

    conv = functools.partial(_conv, dtype=self.dtype)

    out = nn.relu(norm("bn1")(conv(x, self.planes, 3, self.stride, name="conv1")))
    out = norm("bn2")(conv(out, self.planes, 3, 1, name="conv2"))
    residual = x
    if self.stride != 1 or x.shape[-1] != self.planes:
      residual = norm("bn_shortcut")(conv(x, self.planes, 1, self.stride, name="shortcut_conv"))
    return nn.relu(out + residual)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 (x4 channels) bottleneck (bigBatch ``Bottleneck``).

  The stride sits on the 3x3 convolution, as in bigBatch and torchvision
  ("ResNet v1.5"); the shortcut is projected as in :class:`BasicBlock`.
  """

  planes: int
  stride: int
  norm: NormFactory
  dtype: Dtype

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    def norm(name: str) -> nn.Module:
      return self.norm(use_running_average=not train, dtype=self.dtype, name=name)

    conv = functools.partial(_conv, dtype=self.dtype)

    out_planes = self.planes * self.expansion
    out = nn.relu(norm("bn1")(conv(x, self.planes, 1, 1, name="conv1")))
    out = nn.relu(norm("bn2")(conv(out, self.planes, 3, self.stride, name="conv2")))
    out = norm("bn3")(conv(out, out_planes, 1, 1, name="conv3"))
    residual = x
    if self.stride != 1 or x.shape[-1] != out_planes:
      residual = norm("bn_shortcut")(conv(x, out_planes, 1, self.stride, name="shortcut_conv"))
    return nn.relu(out + residual)


def cifar_resnet_features(
  x: jax.Array,
  *,
  blocks_per_stage: int,
  width: int,
  norm: NormFactory,
  dtype: Dtype,
  train: bool,
) -> jax.Array:
  """The CIFAR residual trunk shared by :class:`CifarResNet` and ``WideResNet``.

  bigBatch ``ResNet_cifar10`` (width 16) and ``WResNet_cifar10`` (width
  16 * multiplier) are the same network: conv 3x3 ``width`` -> norm -> ReLU,
  three stages of ``blocks_per_stage`` basic blocks with ``width``,
  ``2*width`` and ``4*width`` channels (strides 1, 2, 2), then a global
  average pool (the reference's ``AvgPool2d(8)`` on the 8x8 map of a 32x32
  input). Must be called inside a ``@nn.compact`` method; the layers become
  children of that module (``conv1``, ``bn1``, ``layer<s>_<b>``).

  Returns:
    The pooled features, shape (batch, 4 * width).
  """
  x = _conv(x, width, 3, 1, name="conv1", dtype=dtype)
  x = nn.relu(norm(use_running_average=not train, dtype=dtype, name="bn1")(x))
  for stage, (planes, stride) in enumerate(((width, 1), (2 * width, 2), (4 * width, 2)), 1):
    for block in range(blocks_per_stage):
      x = BasicBlock(
        planes,
        stride if block == 0 else 1,
        norm=norm,
        dtype=dtype,
        name=f"layer{stage}_{block}",
      )(x, train)
  return jnp.mean(x, axis=(1, 2))


class CifarResNet(ZooModel):
  """He et al.'s CIFAR ResNet of depth 6n+2, as in bigBatch ``ResNet_cifar10``.

  16/32/64 channels, n basic blocks per stage, projection shortcuts (see
  :class:`BasicBlock`), global average pooling and a Dense classifier.
  Depth 44 (n = 7) is the ResNet-44 of Hoffer et al. (2017), Table 1
  (92.83% on CIFAR-10 with batch 128); He et al. report 0.66M parameters for
  it with option-A shortcuts, the projections add 2,752.

  Attributes:
    num_classes, norm, dtype: as :class:`ZooModel`.
    depth: 6n+2 (20, 32, 44, 56, 110, ...); bigBatch's default is 44.
  """

  depth: int = 44

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.depth < 8 or (self.depth - 2) % 6:
      raise ValueError(
        f"CifarResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110); "
        f"got depth={self.depth}."
      )
    check_image_input(x, type(self).__name__)
    x = cifar_resnet_features(
      jnp.asarray(x, self.dtype),
      blocks_per_stage=(self.depth - 2) // 6,
      width=16,
      norm=self.norm,
      dtype=self.dtype,
      train=train,
    )
    return self.logits(x, "fc")


class ResNet44(CifarResNet):
  """ResNet-44 for CIFAR-10 (He et al. 2016): :class:`CifarResNet` with depth 44.

  The default network of bigBatch ``models/resnet.py`` for cifar10.
  """

  depth: int = 44


class ImageNetResNet(ZooModel):
  """He et al.'s (2016) ImageNet bottleneck ResNet, as bigBatch ``ResNet_imagenet``.

  conv 7x7/2 64 -> norm -> ReLU -> maxpool 3/2, then four stages of
  ``stage_sizes`` bottleneck blocks with 64, 128, 256 and 512 planes (x4
  output channels; strides 1, 2, 2, 2), global average pooling and a Dense
  classifier. The pooling is global rather than the reference's
  ``AvgPool2d(7)``: identical at 224x224, and valid at any resolution.

  Attributes:
    num_classes, norm, dtype: as :class:`ZooModel`.
    stage_sizes: blocks per stage: (3, 4, 6, 3) is ResNet-50, (3, 4, 23, 3)
      ResNet-101, (3, 8, 36, 3) ResNet-152.
  """

  stage_sizes: tuple[int, ...] = (3, 4, 6, 3)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if len(self.stage_sizes) != 4 or min(self.stage_sizes) < 1:
      raise ValueError(
        f"ImageNetResNet stage_sizes must be 4 positive block counts such as (3, 4, 6, 3); "
        f"got {self.stage_sizes}."
      )
    check_image_input(x, type(self).__name__)
    x = _conv(jnp.asarray(x, self.dtype), 64, 7, 2, name="conv1", dtype=self.dtype)
    x = max_pool(nn.relu(self.normalize(x, train, "bn1")), 3, 2, padding=1)
    for stage, num_blocks in enumerate(self.stage_sizes, 1):
      planes = 64 * 2 ** (stage - 1)
      for block in range(num_blocks):
        # The first block of stages 2-4 halves the resolution.
        stride = 2 if stage > 1 and block == 0 else 1
        x = Bottleneck(
          planes, stride, norm=self.norm, dtype=self.dtype, name=f"layer{stage}_{block}"
        )(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return self.logits(x, "fc")


class ResNet50(ImageNetResNet):
  """ResNet-50 (He et al. 2016): :class:`ImageNetResNet` with stages (3, 4, 6, 3).

  bigBatch ``models/resnet.py`` with depth 50 (torchvision's layout):
  25,557,032 parameters with 1000 classes. Jaiswal & Taura train it on
  Caltech101 (102 classes).
  """

  stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
