"""ResNet-44 (He et al. 2016) on CIFAR-10 with the bigBatch resnet (cifar10) regime.

Hoffer et al. Table 1, row Resnet44/Cifar10. Launch:

  python -m experiments.main --config=experiments/configs/resnet44.py:lb+lr+gbn+ra --workdir=DIR

The argument is VARIANT[,quick]: a variant of bigbatch_jax.training.variants
(sb, lb, lb+lr, lb+lr+gbn, lb+lr+gbn+ra, lb+mult, lb+linear+white, ...) and
optionally "quick", the same regime shape over 3 epochs (x r with "ra"), a
smoke run. Data: tfds:cifar10 (`tfds build cifar10 --file_format=array_record`),
normalised with the ImageNet statistics and augmented with pad 4, random 32x32
crop and horizontal flip, as the reference (preprocess.get_transform).

Regime: bigBatch models/resnet.py, `ResNet_cifar10.regime`: SGD momentum 0.9,
lr 0.1, weight decay 1e-4, lr x0.1 at epochs 81, 122 and 164 (He et al.'s
32k/48k/64k iterations at batch 128 on 50k images); 200 epochs, the default
`--epochs` of bigBatch main_gbn.py, which the regime's drop at 164 implies.
Base batch 128, large batch 4096, ghost batch 128 (Hoffer sec. 6), gradient
clipping at global norm 5 on every update (main_gbn.py).
"""

from experiments.configs import common

# Hoffer et al. Table 1, Resnet44 on Cifar10 (validation accuracy, %).
PAPER_ACCURACY = {
  "sb": 92.83,
  "lb": 86.10,
  "lb+lr": 89.30,
  "lb+lr+gbn": 90.50,
  "lb+lr+gbn+ra": 93.07,
}
PAPER_DATASET = "tfds:cifar10"


def get_config(arg: str = "lb+lr+gbn+ra"):
  variant, options = common.parse_arg(arg)
  regime = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "epochs": 200.0}
  regime |= {"drop_epochs": (81.0, 122.0, 164.0), "drop_factor": 0.1}
  config = common.paper_row(
    variant,
    model="resnet44",
    dataset=PAPER_DATASET,
    regime=regime,
    augment="cifar",
    eval_batch_size=1000,
  )
  if "quick" in options:
    common.shrink_to_quick(config)
  return config
