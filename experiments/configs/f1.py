"""F1 on MNIST-1D (Hoffer et al. Table 1, row F1/MNIST): the launcher's config file.

  python -m experiments.main --config=experiments/configs/f1.py:lb+lr+gbn+ra --workdir=/tmp/f1

The config is ``bigbatch_jax.configs.f1`` (installed with the package, also
``bigbatch_jax.configs.get("f1", ARG)``); its docstring gives the argument,
the regime and the data.
"""

from bigbatch_jax.configs.f1 import PAPER_ACCURACY, PAPER_DATASET, TABLE1_QUICK, get_config

__all__ = ["PAPER_ACCURACY", "PAPER_DATASET", "TABLE1_QUICK", "get_config"]
