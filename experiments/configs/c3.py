"""C3 on CIFAR-100 (Hoffer et al. Table 1, row C3/Cifar100): the launcher's config file.

  python -m experiments.main --config=experiments/configs/c3.py:lb+lr+gbn+ra --workdir=DIR

The config is ``bigbatch_jax.configs.c3`` (installed with the package, also
``bigbatch_jax.configs.get("c3", ARG)``); its docstring gives the argument,
the regime and the data.
"""

from bigbatch_jax.configs.c3 import PAPER_ACCURACY, PAPER_DATASET, get_config

__all__ = ["PAPER_ACCURACY", "PAPER_DATASET", "get_config"]
