"""C1 on CIFAR-10 (Hoffer et al. Table 1, row C1/Cifar10): the launcher's config file.

  python -m experiments.main --config=experiments/configs/c1.py:lb+lr+gbn+ra --workdir=DIR

The config is ``bigbatch_jax.configs.c1`` (installed with the package, also
``bigbatch_jax.configs.get("c1", ARG)``); its docstring gives the argument,
the regime and the data.
"""

from bigbatch_jax.configs.c1 import PAPER_ACCURACY, PAPER_DATASET, get_config

__all__ = ["PAPER_ACCURACY", "PAPER_DATASET", "get_config"]
