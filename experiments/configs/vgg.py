"""VGG-16 with batch norm on CIFAR-10 with the convNet.pytorch CIFAR VGG regime.

Hoffer et al. Table 1, row VGG/Cifar10. Launch:

  python -m experiments.main --config=experiments/configs/vgg.py:lb+lr+gbn+ra --workdir=DIR

The argument is VARIANT[,quick]: a variant of bigbatch_jax.training.variants
(sb, lb, lb+lr, lb+lr+gbn, lb+lr+gbn+ra, lb+mult, lb+linear+white, ...) and
optionally "quick", the same regime shape over 3 epochs (x r with "ra"), a
smoke run. Data: tfds:cifar10 (`tfds build cifar10 --file_format=array_record`),
normalised with the ImageNet statistics and augmented with pad 4, random 32x32
crop and horizontal flip, as the reference (preprocess.get_transform).

Regime: the bigBatch repository has no VGG, so this is the regime of the CIFAR
VGG of convNet.pytorch (models/vgg.py, `VGG.regime`), the code base bigBatch
is built on and whose model bigbatch_jax.models.VGG follows: SGD momentum 0.9,
lr 0.1, weight decay 5e-4, lr x0.2 at epochs 60, 120 and 160; 200 epochs, the
default `--epochs` of bigBatch main_gbn.py (the regime's last drop is at 160).
Base batch 128, large batch 4096, ghost batch 128 (Hoffer sec. 6), gradient
clipping at global norm 5 on every update (main_gbn.py).
"""

from experiments.configs import common

# Hoffer et al. Table 1, VGG on Cifar10 (validation accuracy, %).
PAPER_ACCURACY = {
  "sb": 92.30,
  "lb": 84.1,
  "lb+lr": 88.6,
  "lb+lr+gbn": 91.50,
  "lb+lr+gbn+ra": 93.03,
}
PAPER_DATASET = "tfds:cifar10"


def get_config(arg: str = "lb+lr+gbn+ra"):
  variant, options = common.parse_arg(arg)
  regime = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "epochs": 200.0}
  regime |= {"drop_epochs": (60.0, 120.0, 160.0), "drop_factor": 0.2}
  config = common.paper_row(
    variant,
    model="vgg",
    dataset=PAPER_DATASET,
    regime=regime,
    augment="cifar",
    eval_batch_size=1000,
    model_options={"depth": 16},  # convNet.pytorch's CIFAR default
  )
  if "quick" in options:
    common.shrink_to_quick(config)
  return config
