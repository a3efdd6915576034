"""ResNet-50 on Caltech101 (Jaiswal & Taura Table 2): the launcher's config file.

  python -m experiments.main --config=experiments/configs/resnet50.py:lb+linear+white --workdir=DIR

The config is ``bigbatch_jax.configs.resnet50`` (installed with the package, also
``bigbatch_jax.configs.get("resnet50", ARG)``); its docstring gives the argument,
the regime and the data.
"""

from bigbatch_jax.configs.resnet50 import (
  PAPER_ACCURACY,
  PAPER_ACCURACY_BY_LARGE_BATCH,
  PAPER_DATASET,
  get_config,
)

__all__ = ["PAPER_ACCURACY", "PAPER_ACCURACY_BY_LARGE_BATCH", "PAPER_DATASET", "get_config"]
