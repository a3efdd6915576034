"""Wide ResNet 16-4 on CIFAR-100 (Hoffer et al. Table 1): the launcher's config file.

  python -m experiments.main --config=experiments/configs/wrn16_4.py:lb+lr+gbn+ra --workdir=DIR

The config is ``bigbatch_jax.configs.wrn16_4`` (installed with the package, also
``bigbatch_jax.configs.get("wrn16_4", ARG)``); its docstring gives the argument,
the regime and the data.
"""

from bigbatch_jax.configs.wrn16_4 import PAPER_ACCURACY, PAPER_DATASET, get_config

__all__ = ["PAPER_ACCURACY", "PAPER_DATASET", "get_config"]
