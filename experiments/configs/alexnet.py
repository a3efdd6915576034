"""AlexNet on ImageNet (Hoffer et al. Table 2): the launcher's config file.

  python -m experiments.main --config=experiments/configs/alexnet.py:lb+lr+gbn+ra --workdir=DIR

The config is ``bigbatch_jax.configs.alexnet`` (installed with the package, also
``bigbatch_jax.configs.get("alexnet", ARG)``); its docstring gives the argument,
the regime and the data.
"""

from bigbatch_jax.configs.alexnet import (
  PAPER_ACCURACY,
  PAPER_ACCURACY_BY_LARGE_BATCH,
  PAPER_BATCH_SIZE,
  PAPER_DATASET,
  get_config,
)

__all__ = [
  "PAPER_ACCURACY",
  "PAPER_ACCURACY_BY_LARGE_BATCH",
  "PAPER_BATCH_SIZE",
  "PAPER_DATASET",
  "get_config",
]
