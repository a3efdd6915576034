"""The paper configs: every row builds a valid plan for every variant and trains under mock data.

The smoke runs use the rows' real models, datasets (tfds under
``tfds.testing.mock_data``), augmentation and regimes with the ``quick``
option, shrunk only in batch sizes, run length and evaluation.
"""

import importlib
import json
import math
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags
from ml_collections import config_flags
from ml_collections.config_dict import FieldReference

from bigbatch_jax import configs, models, training
from bigbatch_jax import data as data_lib
from bigbatch_jax.configs import key_docs
from bigbatch_jax.protocol import resolve_protocol
from bigbatch_jax.training import plan as plan_lib
from bigbatch_jax.training import spec as spec_lib
from bigbatch_jax.training.variants import parse_variant
from experiments.configs import common
from tests.test_training import VARIANTS as TRAINED_VARIANTS

CONFIG_NAMES = ("f1", "c1", "c3", "resnet44", "vgg", "wrn16_4", "alexnet", "resnet50")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Training-set sizes of the rows' paper datasets (caltech101: 3/4 of 9144).
NUM_TRAIN = {
  "tfds:mnist": 60000,
  "mnist1d": 8000,
  "tfds:cifar10": 50000,
  "tfds:cifar100": 50000,
  "tfds:imagenet2012": 1281167,
  "tfds:caltech101": 6858,
}
# Every variant of the training system that needs no extra config: those
# test_training trains end to end, and three more.
VARIANTS = (*TRAINED_VARIANTS, "lb+linear", "sb+gbn", "sb+white")


def _module(name):
  return importlib.import_module(f"experiments.configs.{name}")


def _config_args(name):
  """The get_config arguments a row accepts, besides the variant."""
  return {"resnet50": ("", ",b64", ",quick", ",b64,quick")}.get(name, ("", ",quick"))


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_variant_of_every_row_makes_a_valid_plan(name):
  module = _module(name)
  for option in _config_args(name):
    for variant in VARIANTS:
      config = module.get_config(variant + option)
      assert config.variant == variant
      assert config.model in models.MODELS
      assert config.augment in data_lib.AUGMENTATIONS
      num_train = NUM_TRAIN[config.dataset]
      plan = plan_lib.make_plan(config, num_train, num_devices=1)
      sb = plan_lib.make_plan(module.get_config("sb" + option), num_train, num_devices=1)
      r = config.large_batch_size / config.base_batch_size
      if parse_variant(variant).large_batch:
        assert plan.batch_size == config.large_batch_size
        expected_scale = {"sqrt": math.sqrt(r), "linear": r, "none": 1.0}[plan.lr_rule]
        assert plan.lr_scale == pytest.approx(expected_scale)
      if "ra" in variant.split("+"):
        # Regime adaptation: the small batch's number of updates (Hoffer sec. 5).
        assert plan.num_steps == pytest.approx(sb.num_steps, rel=1e-3)
      if plan.ghost_batch_size is not None:
        assert plan.batch_size % plan.ghost_batch_size == 0
      # The drops fall inside the run.
      assert all(0 < e < plan.regime.epochs for e in plan.regime.drop_epochs)
  with pytest.raises(ValueError, match="unknown config options"):
    module.get_config("sb,fast")


def _declared(config, prefix=""):
  """Every key of ``config`` (dotted) -> its value and declared type: what a config file gives."""
  out = {}
  for key in config:
    value, field = config[key], config._fields[key]
    if hasattr(value, "keys"):
      out.update(_declared(value, f"{prefix}{key}."))
      out[prefix + key] = "sub-config"
    else:
      declared = field.get_type() if isinstance(field, FieldReference) else type(value)
      out[prefix + key] = (repr(value), declared)
  return out


def test_the_package_holds_every_row_and_the_default():
  assert configs.ROWS == CONFIG_NAMES
  assert _declared(configs.get("default")) == _declared(_module("default").get_config())
  with pytest.raises(ValueError, match=r"no config named 'f2'; valid: default, f1, c1"):
    configs.get("f2")
  with pytest.raises(ValueError, match="the default config takes no argument"):
    configs.get("default", "sb")
  with pytest.raises(ValueError, match="unknown config options"):
    configs.get("f1", "sb,fast")


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_configs_get_is_the_launchers_config_file(name):
  # The launcher's files import the package's rows: the same keys, values and
  # declared types (what --config.KEY=VALUE parses against), for the default
  # argument, every option and a few variants.
  module = _module(name)
  assert _declared(configs.get(name)) == _declared(module.get_config())
  for option in _config_args(name):
    for variant in ("sb", "lb+lr+gbn+ra", "lb+linear+white"):
      arg = variant + option
      assert _declared(configs.get(name, arg)) == _declared(module.get_config(arg)), arg
  # As absl loads it: the file's path and argument on the command line.
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  values(["prog", f"--config={REPO}/experiments/configs/{name}.py:sb,quick"])
  assert _declared(values.config) == _declared(configs.get(name, "sb,quick"))


def test_every_key_has_its_comment_from_the_default_config_source():
  comments = key_docs.key_comments()
  assert set(key_docs.leaves(configs.get("default"))) <= {k for k, c in comments.items() if c}
  # The comment on the key's line; else the comment lines right above it, and
  # never the comment of the line before (nor a section heading over a commented key).
  assert comments["regime.lr"] == "initial learning rate at base_batch_size"
  assert comments["dataset"] == '"mnist1d" | "synthetic" | "npz:/path.npz" | "tfds:NAME"'
  assert comments["npz_num_classes"] == (
    "npz: the number of classes (None: largest label + 1, every label in between present)"
  )
  assert comments["protocol"].startswith('Protocol: "clean" (what the papers describe)')
  text = key_docs.describe(configs.get("f1", "sb"), width=100)
  assert "model_options.hidden = 512" in text and max(map(len, text.splitlines())) <= 100


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_rows_record_the_papers_numbers_and_their_launch_command(name):
  module = _module(name)
  # F1 defaults to MNIST-1D (generated locally); the others to the paper's dataset.
  default_dataset = module.get_config("sb").dataset
  assert default_dataset == ("mnist1d" if name == "f1" else module.PAPER_DATASET)
  for variant, accuracy in module.PAPER_ACCURACY.items():
    parse_variant(variant)
    assert 30 < accuracy < 100
  command = f"--config=experiments/configs/{name}.py:"
  assert command in module.__doc__
  assert f"tfds:{models.MODELS[module.get_config('sb').model].dataset}" == module.PAPER_DATASET


def test_the_rows_regimes_and_sizes():
  """The numbers of the paper and the reference code, spot-checked."""
  get = {name: _module(name).get_config("lb+lr+gbn+ra") for name in CONFIG_NAMES}
  assert {n: (c.base_batch_size, c.large_batch_size) for n, c in get.items()} == {
    "f1": (128, 4096),
    "c1": (128, 4096),
    "c3": (128, 4096),
    "resnet44": (128, 4096),
    "vgg": (128, 4096),
    "wrn16_4": (256, 4096),
    "alexnet": (128, 4096),
    "resnet50": (32, 128),
  }
  # Ghost 128 (Hoffer sec. 6): None (the base batch) where the base is 128, so the
  # reference protocol's per-column mini-batch applies; WRN-16-4's base is 256.
  ghosts = {n: get[n].ghost_batch_size or get[n].base_batch_size for n in CONFIG_NAMES}
  assert all(ghosts[n] == 128 for n in CONFIG_NAMES if n != "resnet50")
  resnet44 = get["resnet44"].regime
  assert (resnet44.lr, resnet44.weight_decay, resnet44.drop_epochs) == (
    0.1,
    1e-4,
    (81.0, 122.0, 164.0),
  )
  assert get["wrn16_4"].regime.drop_factor == 0.2
  resnet50 = _module("resnet50")
  assert resnet50.get_config("sb,b64").large_batch_size == 64
  b128 = plan_lib.make_plan(resnet50.get_config("lb+linear+white"), 6858, num_devices=1)
  assert b128.regime.lr * b128.lr_scale == pytest.approx(0.04)  # eta/B = 0.04/128
  assert resnet50.get_config("lb+linear+white").regime.drop_epochs[:3] == (25.0, 40.0, 50.0)
  assert _module("alexnet").PAPER_ACCURACY_BY_LARGE_BATCH[8192]["lb+lr+gbn"] == 53.93


def test_input_pipelines_match_the_datasets():
  cifar = data_lib.load_dataset("synthetic", input_shape=(8, 8, 3))
  config = _module("c1").get_config("sb")
  pipeline = data_lib.input_pipeline(spec_lib.data_spec(config), cifar, resolve_protocol(config))
  assert pipeline.augment is data_lib.cifar_augment and pipeline.train_transform is None
  config.augment = "imagenet"
  with pytest.raises(ValueError, match="streamed"):
    data_lib.input_pipeline(spec_lib.data_spec(config), cifar, resolve_protocol(config))
  config.augment = "flip"
  with pytest.raises(ValueError, match="valid: none, cifar, imagenet"):
    data_lib.input_pipeline(spec_lib.data_spec(config), cifar, resolve_protocol(config))
  flat = data_lib.load_dataset("synthetic")
  config.augment = "cifar"
  with pytest.raises(ValueError, match=r"\(H, W, C\)"):
    data_lib.input_pipeline(spec_lib.data_spec(config), flat, resolve_protocol(config))


def test_imagenet_is_streamed_and_cropped():
  config = _module("alexnet").get_config("sb")
  config.image_size = 64
  with tfds.testing.mock_data(num_examples=16):
    dataset = spec_lib.load_data(config)
    assert isinstance(dataset, data_lib.StreamedDataset)
    assert (dataset.num_train, dataset.num_test, dataset.num_classes) == (16, 16, 1000)
    assert dataset.input_shape == (64, 64, 3)
    pipeline = data_lib.input_pipeline(
      spec_lib.data_spec(config), dataset, resolve_protocol(config)
    )
    assert pipeline.augment is None
    # Mock images have random sizes: both transforms crop them to 64x64.
    rng = np.random.default_rng(0)
    for i in range(3):
      image, _ = dataset.train[i]
      assert pipeline.train_transform(image, rng).shape == (64, 64, 3)
      assert pipeline.eval_transform(image, rng).shape == (64, 64, 3)
    config.augment = "none"  # still cropped: the images differ in size
    assert (
      data_lib.input_pipeline(
        spec_lib.data_spec(config), dataset, resolve_protocol(config)
      ).train_transform
      is not None
    )
    config.augment = "cifar"
    with pytest.raises(ValueError, match="streamed"):
      data_lib.input_pipeline(spec_lib.data_spec(config), dataset, resolve_protocol(config))


# --- smoke runs under mock data -----------------------------------------------------


def _smoke_config(name, variant, **overrides):
  """The row's quick config with batch 8 / 16, ghost 4, two updates, small evaluation."""
  config = _module(name).get_config(f"{variant},quick")
  config.base_batch_size = 8
  config.large_batch_size = 16
  config.ghost_batch_size = 4
  config.stop_after_steps = 2
  config.eval_every_epochs = 0.5  # evaluates within two updates
  config.eval_batch_size = 8
  config.eval_on_train = False
  config.num_devices = 1
  config.log_every_steps = 1
  config.checkpoint_every_steps = 0
  config.progress_bar = False
  if name == "f1":
    config.dataset = "tfds:mnist"  # the paper's dataset, under mock data
  if name == "alexnet":
    # Mock data ignores split slicing: quick's "train[:1%]" is the whole mock split.
    config.tfds_train_split = "train"
    config.tfds_eval_split = "validation"
  common.override(config, overrides)
  return config


def _check_run(tmp_path, config, summary):
  assert summary["variant"] == config.variant and summary["dataset"] == config.dataset
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == 2 and all(np.isfinite(losses))
  evals = [r for r in records if "test_accuracy" in r]
  assert evals and all(np.isfinite(r["test_loss"]) for r in evals)
  assert 0 <= summary["test_accuracy"] <= 1
  assert (tmp_path / "summary.json").exists() and (tmp_path / "checkpoints" / "2").exists()


# Every row runs with its small and its fully remedied large batch (and
# Jaiswal's linear + white noise for resnet50). Measured on the two shared CPU
# cores at load 6-8 (XLA compilation of each model dominates): F1 23-34 s,
# C1 and C3 45-50 s, WRN-16-4 32-37 s, AlexNet 32-42 s, ResNet-44 and VGG
# 55-70 s, ResNet-50 at 224x224 90-150 s. Three cheap runs, which between
# them cover both variants, GBN, regime adaptation and the CIFAR augmentation,
# run by default; the rest with -m slow.
ROW_VARIANTS = ("sb", "lb+lr+gbn+ra")
SMOKE = [("f1", "lb+lr+gbn+ra"), ("c1", "sb"), ("c3", "lb+lr+gbn+ra")]
SLOW_SMOKE = [
  *((name, v) for name in CONFIG_NAMES[:-1] for v in ROW_VARIANTS if (name, v) not in SMOKE),
  ("resnet50", "sb"),
  ("resnet50", "lb+linear+white"),
  ("resnet50", "lb+lr+gbn+ra"),
]


def _smoke(name, variant, tmp_path):
  config = _smoke_config(name, variant)
  with tfds.testing.mock_data(num_examples=16):
    summary = training.train_and_evaluate(config, str(tmp_path))
  _check_run(tmp_path, config, summary)


@pytest.mark.parametrize(("name", "variant"), SMOKE)
def test_row_trains_under_mock_data(name, variant, tmp_path):
  _smoke(name, variant, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "variant"), SLOW_SMOKE)
def test_row_trains_under_mock_data_slow(name, variant, tmp_path):
  _smoke(name, variant, tmp_path)


def test_every_row_is_smoke_tested():
  assert {name for name, _ in SMOKE + SLOW_SMOKE} == set(CONFIG_NAMES)
  for name in CONFIG_NAMES:
    tested = {v for n, v in SMOKE + SLOW_SMOKE if n == name}
    assert "sb" in tested and ({"lb+lr+gbn+ra", "lb+linear+white"} & tested), name


@pytest.mark.parametrize("arg", ["lb+lr+gbn+ra,quick", "sb,table1", "lb+lr,table1"])
def test_an_epochs_override_moves_the_drops_of_shrunk_regimes(arg):
  # get_config declares the drops as fractions of training; the plan derives
  # the drop epochs, so --config.regime.epochs=... keeps the regime's shape.
  from experiments.configs import f1

  config = f1.get_config(arg)
  before = plan_lib.make_plan(config, 8000, num_devices=1).regime
  config.regime.epochs = 2 * config.regime.epochs
  after = plan_lib.make_plan(config, 8000, num_devices=1).regime
  assert after.epochs == pytest.approx(2 * before.epochs)
  fractions = tuple(config.regime.drop_fractions)
  assert len(fractions) >= 2
  assert after.drop_epochs == pytest.approx(tuple(2 * e for e in before.drop_epochs))
  assert tuple(e / after.epochs for e in after.drop_epochs) == pytest.approx(fractions)


def test_declared_drop_epochs_take_precedence_over_fractions():
  from experiments.configs import f1

  config = f1.get_config("sb,table1")
  config.regime.drop_epochs = (5.0,)
  assert plan_lib.make_plan(config, 8000, num_devices=1).regime.drop_epochs == (5.0,)
  config.regime.drop_epochs = ()
  config.regime.drop_fractions = (0.5, 1.5)
  with pytest.raises(ValueError, match=r"drop_fractions must lie in \(0, 1\), got \(0.5, 1.5\)"):
    plan_lib.make_plan(config, 8000, num_devices=1)
