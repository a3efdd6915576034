"""The model zoo of Hoffer et al. (2017) section 6 and Jaiswal & Taura, in flax.linen.

Every model is ``Model(num_classes, norm=torch_batch_norm, dtype=jnp.float32,
...)`` with ``__call__(x, train)``. The normalization layer is injected: each
norm layer is built as ``norm(use_running_average=not train, dtype=dtype,
name=...)``, so a ``functools.partial`` of ``nn.BatchNorm`` (momentum,
epsilon, axis_name) or of ``GhostBatchNorm`` swaps it everywhere, and every
norm layer's name starts with ``bn``. Dropout (C1/C3, VGG, AlexNet) draws
from the ``'dropout'`` rng collection in train mode only. Inputs are NHWC
images (F1 also takes vectors); logits come back as float32.
"""

from bigbatch_jax.models.alexnet import AlexNet
from bigbatch_jax.models.layers import torch_batch_norm
from bigbatch_jax.models.mlp import F1
from bigbatch_jax.models.registry import MODEL_INPUT_SHAPES, MODELS, ModelSpec, get_model
from bigbatch_jax.models.resnet import (
  BasicBlock,
  Bottleneck,
  CifarResNet,
  ImageNetResNet,
  ResNet44,
  ResNet50,
)
from bigbatch_jax.models.shallow_cnn import C1, C3
from bigbatch_jax.models.vgg import VGG
from bigbatch_jax.models.wide_resnet import WideResNet

__all__ = [
  "C1",
  "C3",
  "F1",
  "MODELS",
  "MODEL_INPUT_SHAPES",
  "VGG",
  "AlexNet",
  "BasicBlock",
  "Bottleneck",
  "CifarResNet",
  "ImageNetResNet",
  "ModelSpec",
  "ResNet44",
  "ResNet50",
  "WideResNet",
  "get_model",
  "torch_batch_norm",
]
