"""F1 (Keskar et al.'s fully connected net) with the bigBatch mnist_f1 regime.

Hoffer et al. Table 1, row F1/MNIST. Launch:

  python -m experiments.main --config=experiments/configs/f1.py:lb+lr+gbn+ra --workdir=/tmp/f1

The argument is VARIANT[,quick]: a variant of bigbatch_jax.training.variants
(sb, lb, lb+lr, lb+lr+gbn, lb+lr+gbn+ra, lb+mult, lb+linear+white, ...) and
optionally "quick", which shrinks the regime to a smoke run. The default
dataset is MNIST-1D (generated locally, no download); the paper's MNIST is
--config.dataset=tfds:mnist.
"""

from experiments.configs import default

# Hoffer et al. Table 1, F1 on MNIST (validation accuracy, %).
PAPER_ACCURACY = {
  "sb": 98.27,
  "lb": 97.05,
  "lb+lr": 97.55,
  "lb+lr+gbn": 97.60,
  "lb+lr+gbn+ra": 98.53,
}
PAPER_DATASET = "tfds:mnist"


def get_config(arg: str = "lb+lr+gbn"):
  variant, *options = arg.split(",")
  unknown = set(options) - {"quick"}
  if unknown:
    raise ValueError(f"unknown config options {sorted(unknown)} in {arg!r}; valid: quick")
  config = default.get_config()
  config.variant = variant
  config.model = "f1"
  config.model_options.hidden = 512
  config.model_options.depth = 5
  config.dataset = "mnist1d"
  config.mnist1d_num_samples = 10000
  config.base_batch_size = 128
  config.large_batch_size = 4096
  config.ghost_batch_size = 128
  # bigBatch mnist_f1 regime: SGD momentum 0.9, lr 0.1, wd 1e-4, x0.1 at 10/20/30, 50 epochs.
  config.regime.lr = 0.1
  config.regime.momentum = 0.9
  config.regime.weight_decay = 1e-4
  config.regime.epochs = 50.0
  config.regime.drop_epochs = (10.0, 20.0, 30.0)
  config.regime.drop_factor = 0.1
  config.grad_clip_norm = 5.0  # the reference code clips every step at 5
  if "quick" in options:
    # The same regime shape over 3 epochs (x r with "ra"): a smoke run.
    config.regime.epochs = 3.0
    config.regime.drop_epochs = (0.6, 1.2, 1.8)
    config.log_every_steps = 10
  return config
