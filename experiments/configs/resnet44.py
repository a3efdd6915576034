"""ResNet-44 on CIFAR-10 (Hoffer et al. Table 1, row Resnet44/Cifar10): the launcher's config file.

  python -m experiments.main --config=experiments/configs/resnet44.py:lb+lr+gbn+ra --workdir=DIR

The config is ``bigbatch_jax.configs.resnet44`` (installed with the package, also
``bigbatch_jax.configs.get("resnet44", ARG)``); its docstring gives the argument,
the regime and the data.
"""

from bigbatch_jax.configs.resnet44 import PAPER_ACCURACY, PAPER_DATASET, get_config

__all__ = ["PAPER_ACCURACY", "PAPER_DATASET", "get_config"]
