"""The run configs, inside the package: the default (every key) and one per paper row.

``get(name, arg)`` returns the complete config of a row and its argument, the
same ConfigDict as the launcher's ``--config=experiments/configs/NAME.py:ARG``
(those files import from here), so an installed package trains without a
clone:

>>> from bigbatch_jax import configs
>>> config = configs.get("f1", "lb+lr+gbn,quick")
>>> (config.model, config.variant, config.regime.epochs)
('f1', 'lb+lr+gbn', 3.0)

then ``bigbatch_jax.training.train_and_evaluate(config, workdir)``. The rows:
``f1`` (Hoffer Table 1, F1 on MNIST-1D by default), ``c1``, ``c3``,
``resnet44``, ``vgg``, ``wrn16_4`` (Hoffer Table 1, CIFAR), ``alexnet``
(Hoffer Table 2, ImageNet) and ``resnet50`` (Jaiswal & Taura, Caltech101);
``default`` is the default config (``default.py`` declares every key with its
meaning). Each row's module documents its argument (``VARIANT[,quick]``, and
F1's ``,table1``, ResNet-50's ``,b64``) and records the paper's numbers
(``PAPER_ACCURACY``, ``PAPER_DATASET``). ``key_docs.describe(config)`` lists
a config's keys with their meaning (the comments of ``default.py``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import ml_collections

ROWS = ("f1", "c1", "c3", "resnet44", "vgg", "wrn16_4", "alexnet", "resnet50")
"""The paper rows: Hoffer et al. Table 1's, Table 2's AlexNet, then Jaiswal & Taura's ResNet-50."""
NAMES = ("default", *ROWS)
"""Every config :func:`get` knows: the default config and the rows."""


def module(name: str) -> ModuleType:
  """The module of config ``name`` (one of :data:`NAMES`): its ``get_config`` and paper numbers."""
  if name not in NAMES:
    raise ValueError(f"no config named {name!r}; valid: {', '.join(NAMES)}")
  return importlib.import_module(f"{__name__}.{name}")


def get(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The complete config of row ``name`` with argument ``arg`` (``"VARIANT[,OPTION...]"``).

  Args:
    name: ``"default"`` or a paper row of :data:`ROWS` (e.g. ``"f1"``).
    arg: the row's argument, e.g. ``"lb+lr+gbn+ra"`` or ``"sb,quick"``: what
      follows the colon in ``--config=experiments/configs/f1.py:ARG``. None:
      the row's default argument. The default config takes none.

  Returns:
    A fresh ConfigDict (unlocked; changing it changes no other call's).

  Raises:
    ValueError: an unknown name, an argument given to ``"default"``, or an
      argument the row refuses (an unknown option, two run sizes).
  """
  config_module = module(name)
  if arg is None:
    return config_module.get_config()
  if name == "default":
    raise ValueError(
      f"configs.get('default', {arg!r}): the default config takes no argument; a paper row "
      f"does: {', '.join(ROWS)}"
    )
  return config_module.get_config(arg)


__all__ = ["NAMES", "ROWS", "get", "module"]
