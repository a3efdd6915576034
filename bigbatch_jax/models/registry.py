"""Model registry: the networks of Hoffer et al. (2017) section 6 and Jaiswal & Taura by name."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from flax import linen as nn

from bigbatch_jax.models.alexnet import AlexNet
from bigbatch_jax.models.layers import NormFactory, torch_batch_norm
from bigbatch_jax.models.mlp import F1
from bigbatch_jax.models.resnet import CifarResNet, ResNet44, ResNet50
from bigbatch_jax.models.shallow_cnn import C1, C3
from bigbatch_jax.models.vgg import VGG
from bigbatch_jax.models.wide_resnet import WideResNet


class ModelSpec(NamedTuple):
  """A registered model and the dataset it is trained on in the papers."""

  constructor: Callable[..., nn.Module]  # module class
  fixed_kwargs: Mapping[str, Any]  # architecture choices the name pins
  dataset: str  # tfds name of the paper's dataset
  input_shape: tuple[int, ...]  # one example, without the batch axis (NHWC)
  num_classes: int  # classes of that dataset


MODELS: Mapping[str, ModelSpec] = MappingProxyType(
  {
    # Hoffer et al. (2017), Table 1 and Table 2.
    "f1": ModelSpec(F1, {}, "mnist", (28, 28, 1), 10),
    "c1": ModelSpec(C1, {}, "cifar10", (32, 32, 3), 10),
    "c3": ModelSpec(C3, {}, "cifar100", (32, 32, 3), 100),
    "resnet44": ModelSpec(ResNet44, {"depth": 44}, "cifar10", (32, 32, 3), 10),
    "cifar_resnet": ModelSpec(CifarResNet, {}, "cifar10", (32, 32, 3), 10),
    "vgg": ModelSpec(VGG, {}, "cifar10", (32, 32, 3), 10),
    "wrn16_4": ModelSpec(
      WideResNet, {"depth": 16, "widen_factor": 4}, "cifar100", (32, 32, 3), 100
    ),
    "alexnet": ModelSpec(AlexNet, {}, "imagenet2012", (224, 224, 3), 1000),
    # Jaiswal & Taura: ResNet-50 on Caltech101 (tfds: 102 classes, with
    # the background class), images resized to the usual 224x224.
    "resnet50": ModelSpec(
      ResNet50, {"stage_sizes": (3, 4, 6, 3)}, "caltech101", (224, 224, 3), 102
    ),
  }
)

MODEL_INPUT_SHAPES: Mapping[str, tuple[int, ...]] = MappingProxyType(
  {name: spec.input_shape for name, spec in MODELS.items()}
)
"""Shape of one input example (no batch axis) of each model's paper dataset."""


def get_model(
  name: str, num_classes: int, norm: NormFactory = torch_batch_norm, **kwargs: Any
) -> nn.Module:
  """Builds a registered model.

  Args:
    name: one of ``MODELS``: "f1", "c1", "c3", "resnet44", "cifar_resnet"
      (pass ``depth=6n+2``, default 44), "vgg", "wrn16_4", "alexnet",
      "resnet50".
    num_classes: number of outputs.
    norm: normalization constructor, e.g. ``functools.partial(nn.BatchNorm,
      momentum=0.9, epsilon=1e-5, axis_name="batch")`` or a
      ``GhostBatchNorm`` partial; the model calls it with
      ``use_running_average``, ``dtype`` and ``name``.
    **kwargs: further fields of the model class (``dtype``, ``hidden``,
      ``depth``, ``dropout_rate``, ...).

  Returns:
    The (unbound) flax module; call ``init``/``apply`` with ``train=...``.

  Raises:
    ValueError: for an unknown name, or a keyword that the name fixes
      (``depth`` for "resnet44" and "wrn16_4", ``widen_factor`` for
      "wrn16_4", ``stage_sizes`` for "resnet50").

  Example::

    model = get_model("resnet44", num_classes=10)
    x = jnp.zeros((8, *MODEL_INPUT_SHAPES["resnet44"]))
    variables = model.init(jax.random.key(0), x, train=False)
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}.")
  spec = MODELS[name]
  clashes = sorted(set(kwargs) & set(spec.fixed_kwargs))
  if clashes:
    raise ValueError(
      f"model {name!r} fixes {dict(spec.fixed_kwargs)}; do not pass {clashes}. "
      f"Use the model class {spec.constructor.__name__} directly for other values."
    )
  constructor = functools.partial(spec.constructor, **spec.fixed_kwargs)
  return constructor(num_classes=num_classes, norm=norm, **kwargs)
