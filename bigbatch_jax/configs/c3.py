"""C3 (Keskar et al.'s shallow convnet) on CIFAR-100 with the bigBatch cifar_shallow regime.

Hoffer et al. Table 1, row C3/Cifar100. In code:
``bigbatch_jax.configs.get("c3", "lb+lr+gbn+ra")``; from a clone:

  python -m experiments.main --config=experiments/configs/c3.py:lb+lr+gbn+ra --workdir=DIR

The argument is VARIANT[,quick] and the data tfds:cifar100, prepared as the
reference does, and the batch sizes and clipping unless said below: see
bigbatch_jax.configs.common.cifar_row.

Regime: C1's (bigbatch_jax/configs/c1.py), which is bigBatch
models/cifar_shallow.py's regime for cifar100_shallow too.
"""

from bigbatch_jax.configs import c1, common

# Hoffer et al. Table 1, C3 on Cifar100 (validation accuracy, %).
PAPER_ACCURACY = common.table1_accuracy(61.25, 51.50, 57.38, 57.5, 63.20)
PAPER_DATASET = "tfds:cifar100"


def get_config(arg: str = "lb+lr+gbn+ra"):
  # C3 is C1's network, regime and batch sizes on CIFAR-100 (Keskar et al.).
  config = c1.get_config(arg)
  config.model = "c3"
  config.dataset = PAPER_DATASET
  return config
