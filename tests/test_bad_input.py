"""Bad input fails before any compute, with an error naming the value and what is valid."""

import os

import numpy as np
import pytest

from bigbatch_jax import training
from bigbatch_jax.training import plan as plan_lib
from tests.test_training import tiny_config


def _npz(tmp_path, name, **overrides):
  rng = np.random.default_rng(0)
  arrays = {
    "x_train": rng.normal(size=(32, 4)).astype(np.float32),
    "y_train": rng.integers(0, 3, 32),
    "x_test": rng.normal(size=(8, 4)).astype(np.float32),
    "y_test": rng.integers(0, 3, 8),
  }
  arrays.update(overrides)
  arrays = {k: v for k, v in arrays.items() if v is not None}
  path = tmp_path / f"{name}.npz"
  np.savez(path, **arrays)
  return f"npz:{path}"


def _write(path, content: bytes) -> str:
  path.write_bytes(content)
  return str(path)


NAN_INPUTS = np.ones((32, 4), np.float32)
NAN_INPUTS[3, 1] = np.nan

# (id, config overrides or a function of tmp_path returning them, error, message regex)
CASES = [
  (
    "zero batch",
    {"batch_size": 0},
    ValueError,
    r"config.batch_size must be a positive integer, got 0",
  ),
  (
    "negative batch",
    {"batch_size": -64},
    ValueError,
    r"config.batch_size must be a positive integer, got -64",
  ),
  (
    "zero base batch",
    {"base_batch_size": 0},
    ValueError,
    r"config.base_batch_size must be a positive",
  ),
  (
    "negative large batch",
    {"large_batch_size": -1},
    ValueError,
    r"config.large_batch_size must be a positive",
  ),
  ("ghost of one", {"ghost_batch_size": 1}, ValueError, r"config.ghost_batch_size=1 must be >= 2"),
  (
    "ghost not dividing",
    {"ghost_batch_size": 12},
    ValueError,
    r"ghost_batch_size=12 does not divide the per-device batch of 16",
  ),
  (
    "ghost vs devices",
    {"num_devices": 4, "ghost_batch_size": 32},
    ValueError,
    r"does not divide the per-device batch of 16 \(batch_size=64 over 4 devices\)",
  ),
  (
    "batch vs devices",
    {"num_devices": 3},
    ValueError,
    r"batch_size=64 is not divisible by the 3 devices",
  ),
  (
    "too many devices",
    {"num_devices": 9},
    ValueError,
    r"num_devices=9 but 4 devices are available",
  ),
  (
    "eval batch vs devices",
    {"num_devices": 3, "batch_size": 63, "variant": "lb+lr", "eval_batch_size": 64},
    ValueError,
    r"eval_batch_size=64 is not divisible by 3 devices",
  ),
  (
    "unknown part",
    {"variant": "lb+lr+fancy"},
    ValueError,
    r"unknown part 'fancy'; valid parts after sb/lb: lr, linear, gbn",
  ),
  (
    "unknown batch part",
    {"variant": "xl+lr"},
    ValueError,
    r"must start with the batch part 'sb' or 'lb', got 'xl'",
  ),
  (
    "contradictory rules",
    {"variant": "lb+lr+linear"},
    ValueError,
    r"contradictory: 'lr' \(square-root scaling\) and 'linear'",
  ),
  ("repeated part", {"variant": "lb+gbn+gbn"}, ValueError, r"repeats \['gbn'\]"),
  (
    "two ghost normalizations",
    {"variant": "lb+lr+gbn+gni"},
    ValueError,
    r"contradictory: 'gbn' and 'gni' \(two normalizations of the ghost batches",
  ),
  (
    "unknown ghost draws",
    {"variant": "lb+lr+gni", "ghost_draws": "all"},
    ValueError,
    r"ghost_draws='all'; valid: \('per_ghost', 'per_example'\)",
  ),
  (
    "remedy without large batch",
    {"variant": "sb+mult"},
    ValueError,
    r"\['mult'\] have no effect at the base batch size",
  ),
  (
    "large variant, small batch",
    {"variant": "lb+lr", "batch_size": 16},
    ValueError,
    r"batch_size=16 is not larger than base_batch_size=16",
  ),
  ("unknown rule", {"lr_rule": "cubic"}, ValueError, r"unknown learning-rate rule 'cubic'"),
  ("bad lr", {"regime.lr": -1.0}, ValueError, r"Regime.lr must be > 0, got -1.0"),
  (
    "bad momentum",
    {"regime.momentum": 1.5},
    ValueError,
    r"Regime.momentum must be in \[0, 1\), got 1.5",
  ),
  (
    "decreasing drops",
    {"regime.drop_epochs": (2.0, 1.0)},
    ValueError,
    r"Regime.drop_epochs must be increasing",
  ),
  (
    "zero epochs",
    {"num_epochs": 0.0},
    ValueError,
    r"config.num_epochs must be > 0 or None, got 0.0",
  ),
  ("under one update", {"num_epochs": 0.01}, ValueError, r"less than one update"),
  (
    "negative noise",
    {"variant": "lb+mult", "mult_noise_variance": -1.0},
    ValueError,
    r"mult_noise_variance must be >= 0, got -1.0",
  ),
  ("zero clip", {"grad_clip_norm": 0.0}, ValueError, r"grad_clip_norm must be > 0, got 0.0"),
  (
    "bad policy",
    {"nonfinite_policy": "ignore"},
    ValueError,
    r"nonfinite_policy='ignore'; valid: \('stop', 'skip'\)",
  ),
  (
    "bad ghost update",
    {"ghost_stats_update": "ema"},
    ValueError,
    r"ghost_stats_update='ema'; valid: \('sequential', 'mean'\)",
  ),
  (
    "unknown model",
    {"model": "resnet1000"},
    ValueError,
    r"unknown model 'resnet1000'; valid names",
  ),
  ("unknown dataset", {"dataset": "imagenet21k"}, ValueError, r"imagenet21k"),
  (
    "missing npz",
    {"dataset": "npz:/does/not/exist.npz"},
    FileNotFoundError,
    r"/does/not/exist.npz",
  ),
  ("npz missing key", lambda t: {"dataset": _npz(t, "keys", y_test=None)}, ValueError, r"y_test"),
  (
    "npz length mismatch",
    lambda t: {"dataset": _npz(t, "len", y_train=np.zeros(31, int))},
    ValueError,
    r"32.*31|31.*32",
  ),
  (
    "npz float labels",
    lambda t: {"dataset": _npz(t, "dtype", y_train=np.full(32, 0.5))},
    ValueError,
    r"y_train.*integer|integer.*y_train",
  ),
  (
    "npz label out of range",
    lambda t: {"dataset": _npz(t, "labels", y_train=np.full(32, -1))},
    ValueError,
    r"-1",
  ),
  (
    "npz NaN input",
    lambda t: {"dataset": _npz(t, "nan", x_train=NAN_INPUTS)},
    ValueError,
    r"NaN|nan|non-finite",
  ),
  (
    "npz shape mismatch",
    lambda t: {"dataset": _npz(t, "shape", x_test=np.zeros((8, 5), np.float32))},
    ValueError,
    r"\(4,\).*\(5,\)|\(5,\).*\(4,\)",
  ),
  (
    "npz empty test split",
    lambda t: {
      "dataset": _npz(t, "empty", x_test=np.zeros((0, 4), np.float32), y_test=np.zeros(0, int))
    },
    ValueError,
    r"the test split \(x_test\) is empty",
  ),
  (
    "npz examples with no features",
    lambda t: {
      "dataset": _npz(
        t, "zero", x_train=np.zeros((32, 0), np.float32), x_test=np.zeros((8, 0), np.float32)
      )
    },
    ValueError,
    r"examples have shape \(0,\), with no features",
  ),
  (
    "npz label 255 without the number of classes",
    lambda t: {"dataset": _npz(t, "void", y_train=np.r_[np.arange(3).repeat(10), [255, 255]])},
    ValueError,
    r"label 255 makes 256 classes, but 252 of the labels 0..255 have no example.*npz_num_classes",
  ),
  (
    "npz label beyond the given number of classes",
    lambda t: {
      "dataset": _npz(t, "beyond", y_train=np.r_[np.arange(3).repeat(10), [255, 255]]),
      "npz_num_classes": 3,
    },
    ValueError,
    r"label 255 is out of range \[0, 3\) for num_classes=3",
  ),
  (
    "npz file that is not a zip",
    lambda t: {"dataset": "npz:" + _write(t / "text.npz", b"PK\x03\x04 not really a zip")},
    ValueError,
    r"text.npz' is not a readable numpy .npz file \(a zip archive written by numpy.savez\)",
  ),
  (
    "batch does not fit in memory",
    {"variant": "lb", "batch_size": 2**27, "num_epochs": float(2**19)},
    MemoryError,
    r"batch_size=134217728 .* needs [\d.]+ GiB per device but [\d.]+ GiB is free",
  ),
]


@pytest.mark.parametrize(
  ("overrides", "error", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_fails_before_training(overrides, error, message, tmp_path):
  if callable(overrides):
    overrides = overrides(tmp_path)
  with pytest.raises(error, match=message):
    training.train_and_evaluate(tiny_config(**overrides), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
  assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")


def test_at_least_25_cases():
  assert len(CASES) >= 25


def test_a_misspelled_key_of_the_locked_config_is_an_error():
  config = tiny_config()
  config.lock()
  with pytest.raises(AttributeError, match="batch_szie"):
    config.batch_szie = 1


def test_batch_not_divisible_by_the_process_count():
  with pytest.raises(ValueError, match=r"batch_size=64 is not divisible by process_count=3"):
    plan_lib.make_plan(tiny_config(), num_train=512, num_devices=1, process_count=3)


def test_a_workdir_holding_another_config_is_refused_unless_told(tmp_path):
  training.train_and_evaluate(tiny_config("sb", num_epochs=0.25), str(tmp_path))
  with pytest.raises(ValueError, match=r"different config \(variant: 'sb' -> 'lb'"):
    training.train_and_evaluate(tiny_config("lb", num_epochs=0.25), str(tmp_path))
  training.train_and_evaluate(
    tiny_config("lb", num_epochs=0.25, allow_config_change=True), str(tmp_path)
  )
