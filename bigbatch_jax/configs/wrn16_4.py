"""Wide ResNet 16-4 (Zagoruyko & Komodakis 2016) on CIFAR-100 with the bigBatch wresnet regime.

Hoffer et al. Table 1, row WResnet16-4/Cifar100. In code:
``bigbatch_jax.configs.get("wrn16_4", "lb+lr+gbn+ra")``; from a clone:

  python -m experiments.main --config=experiments/configs/wrn16_4.py:lb+lr+gbn+ra --workdir=DIR

The argument is VARIANT[,quick] and the data tfds:cifar100, prepared as the
reference does, and the batch sizes and clipping unless said below: see
bigbatch_jax.configs.common.cifar_row.

Regime: bigBatch models/wide_resnet.py, `WResNet_cifar10.regime` (also used for
cifar100): SGD momentum 0.9, lr 0.1, weight decay 1e-4, lr 0.02 at epoch 60,
0.004 at 120 and 1e-4 at 140; 200 epochs, the default `--epochs` of bigBatch
main_gbn.py (Zagoruyko & Komodakis also train 200 epochs). `Regime` has one
drop factor, so every drop here is x0.2 (Zagoruyko & Komodakis' factor): the
lr after epoch 140 is 8e-4 where the reference has 1e-4. Base batch 256 and
large batch 4096 (Hoffer sec. 6: "256 (WResnet)"), ghost batch 128 ("The
ghost batch size used is 128"), so r = 16; gradient clipping at global norm 5
on every update (main_gbn.py).
"""

from bigbatch_jax.configs import common

# Hoffer et al. Table 1, WResnet16-4 on Cifar100 (validation accuracy, %).
PAPER_ACCURACY = common.table1_accuracy(73.70, 68.15, 69.05, 71.20, 73.57)
PAPER_DATASET = "tfds:cifar100"


def get_config(arg: str = "lb+lr+gbn+ra"):
  regime = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "epochs": 200.0}
  regime |= {"drop_epochs": (60.0, 120.0, 140.0), "drop_factor": 0.2}
  return common.cifar_row(
    arg,
    model="wrn16_4",
    dataset=PAPER_DATASET,
    regime=regime,
    base_batch_size=256,
    ghost_batch_size=128,
  )
