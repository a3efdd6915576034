"""VGG-16 with batch norm on CIFAR-10 with the convNet.pytorch CIFAR VGG regime.

Hoffer et al. Table 1, row VGG/Cifar10. In code:
``bigbatch_jax.configs.get("vgg", "lb+lr+gbn+ra")``; from a clone:

  python -m experiments.main --config=experiments/configs/vgg.py:lb+lr+gbn+ra --workdir=DIR

The argument is VARIANT[,quick] and the data tfds:cifar10, prepared as the
reference does, and the batch sizes and clipping unless said below: see
bigbatch_jax.configs.common.cifar_row.

Regime: the bigBatch repository has no VGG, so this is the regime of the CIFAR
VGG of convNet.pytorch (models/vgg.py, `VGG.regime`), the code base bigBatch
is built on and whose model bigbatch_jax.models.VGG follows: SGD momentum 0.9,
lr 0.1, weight decay 5e-4, lr x0.2 at epochs 60, 120 and 160; 200 epochs, the
default `--epochs` of bigBatch main_gbn.py (the regime's last drop is at 160).
"""

from bigbatch_jax.configs import common

# Hoffer et al. Table 1, VGG on Cifar10 (validation accuracy, %).
PAPER_ACCURACY = common.table1_accuracy(92.30, 84.1, 88.6, 91.50, 93.03)
PAPER_DATASET = "tfds:cifar10"


def get_config(arg: str = "lb+lr+gbn+ra"):
  regime = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "epochs": 200.0}
  regime |= {"drop_epochs": (60.0, 120.0, 160.0), "drop_factor": 0.2}
  # Depth 16: convNet.pytorch's CIFAR default.
  model_options = {"depth": 16}
  return common.cifar_row(
    arg, model="vgg", dataset=PAPER_DATASET, regime=regime, model_options=model_options
  )
