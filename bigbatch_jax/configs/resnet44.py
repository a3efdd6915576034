"""ResNet-44 (He et al. 2016) on CIFAR-10 with the bigBatch resnet (cifar10) regime.

Hoffer et al. Table 1, row Resnet44/Cifar10. In code:
``bigbatch_jax.configs.get("resnet44", "lb+lr+gbn+ra")``; from a clone:

  python -m experiments.main --config=experiments/configs/resnet44.py:lb+lr+gbn+ra --workdir=DIR

The argument is VARIANT[,quick] and the data tfds:cifar10, prepared as the
reference does, and the batch sizes and clipping unless said below: see
bigbatch_jax.configs.common.cifar_row.

Regime: bigBatch models/resnet.py, `ResNet_cifar10.regime`: SGD momentum 0.9,
lr 0.1, weight decay 1e-4, lr x0.1 at epochs 81, 122 and 164 (He et al.'s
32k/48k/64k iterations at batch 128 on 50k images); 200 epochs, the default
`--epochs` of bigBatch main_gbn.py, which the regime's drop at 164 implies.
"""

from bigbatch_jax.configs import common

# Hoffer et al. Table 1, Resnet44 on Cifar10 (validation accuracy, %).
PAPER_ACCURACY = common.table1_accuracy(92.83, 86.10, 89.30, 90.50, 93.07)
PAPER_DATASET = "tfds:cifar10"


def get_config(arg: str = "lb+lr+gbn+ra"):
  regime = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "epochs": 200.0}
  regime |= {"drop_epochs": (81.0, 122.0, 164.0), "drop_factor": 0.1}
  return common.cifar_row(arg, model="resnet44", dataset=PAPER_DATASET, regime=regime)
