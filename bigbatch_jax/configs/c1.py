"""C1 (Keskar et al.'s shallow convnet) on CIFAR-10 with the bigBatch cifar_shallow regime.

Hoffer et al. Table 1, row C1/Cifar10. In code:
``bigbatch_jax.configs.get("c1", "lb+lr+gbn+ra")``; from a clone:

  python -m experiments.main --config=experiments/configs/c1.py:lb+lr+gbn+ra --workdir=DIR

The argument is VARIANT[,quick] and the data tfds:cifar10, prepared as the
reference does, and the batch sizes and clipping unless said below: see
bigbatch_jax.configs.common.cifar_row.

Regime: bigBatch models/cifar_shallow.py with 200 epochs (run_experiments.sh,
`--epochs 200`). The reference regime is {0: lr 1e-3, weight decay 5e-4; 60: lr 1e-2; 120:
lr 1e-3; 180: lr 1e-4} and sets no momentum, so torch's SGD default of 0
applies (the paper's text says "momentum SGD": --config.regime.momentum=0.9
follows the text instead). `Regime` has one drop factor, so the first 60
epochs at 1e-3 (a warm-up) cannot be expressed: this config starts at 1e-2
and drops x0.1 at epochs 120 and 180, the reference from epoch 60 on.
"""

from bigbatch_jax.configs import common

# Hoffer et al. Table 1, C1 on Cifar10 (validation accuracy, %).
PAPER_ACCURACY = common.table1_accuracy(87.80, 83.95, 86.15, 86.4, 88.20)
PAPER_DATASET = "tfds:cifar10"


def get_config(arg: str = "lb+lr+gbn+ra"):
  # bigBatch cifar_shallow regime from its epoch 60 on (see the docstring).
  regime = {"lr": 1e-2, "momentum": 0.0, "weight_decay": 5e-4, "epochs": 200.0}
  regime |= {"drop_epochs": (120.0, 180.0), "drop_factor": 0.1}
  return common.cifar_row(arg, model="c1", dataset=PAPER_DATASET, regime=regime)
