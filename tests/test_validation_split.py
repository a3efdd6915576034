"""The validation split held out from the training set (bigbatch_jax/data/validation.py)."""

import numpy as np
import pytest

from bigbatch_jax import data, training
from bigbatch_jax.data import validation
from bigbatch_jax.training import spec as spec_lib
from experiments.configs import default


def tiny_config(**changes):
  config = default.get_config()
  config.dataset = "synthetic"
  config.model = "f1"
  config.model_options.hidden = 8
  config.model_options.depth = 1
  config.variant = "sb"
  config.base_batch_size = 16
  config.large_batch_size = 64
  config.regime.epochs = 0.25
  config.eval_on_train = False
  config.eval_batch_size = 64
  config.checkpoint_every_steps = 0
  config.progress_bar = False
  for key, value in changes.items():
    setattr(config, key, value)
  return config


def _rows(x):
  return {row.tobytes() for row in x}


def test_the_split_is_disjoint_from_the_kept_examples_and_never_the_test_set():
  full = spec_lib.load_data(tiny_config())
  split = spec_lib.load_data(tiny_config(validation_fraction=0.1))
  assert split.num_test == round(0.1 * full.num_train)
  assert split.num_train + split.num_test == full.num_train
  held, kept = _rows(split.x_test), _rows(split.x_train)
  assert not held & kept  # disjoint (synthetic examples are distinct)
  assert held | kept == _rows(full.x_train)  # together: the training set, nothing else
  assert not held & _rows(full.x_test)  # the evaluated split holds no test example
  assert split.name == "synthetic[validation 0.1, seed 0]"


def test_the_split_is_the_same_for_every_run_seed_and_reproducible():
  first = spec_lib.load_data(tiny_config(validation_fraction=0.2, seed=0))
  for seed in (0, 1, 7):
    again = spec_lib.load_data(tiny_config(validation_fraction=0.2, seed=seed))
    np.testing.assert_array_equal(again.x_test, first.x_test)
    np.testing.assert_array_equal(again.y_train, first.y_train)
  other = spec_lib.load_data(tiny_config(validation_fraction=0.2, validation_seed=1))
  assert _rows(other.x_test) != _rows(first.x_test)  # the split seed alone moves it


def test_fraction_zero_leaves_the_data_and_the_run_bit_identical(tmp_path):
  config = tiny_config()
  loaded = data.load_dataset("synthetic", seed=config.data_seed)
  plain = spec_lib.load_data(config)
  assert plain.name == loaded.name
  for field in ("x_train", "y_train", "x_test", "y_test"):
    np.testing.assert_array_equal(getattr(plain, field), getattr(loaded, field))
  summary = training.train_and_evaluate(config, str(tmp_path / "test"))
  assert summary["evaluated_split"] == "test"
  held = training.train_and_evaluate(
    tiny_config(validation_fraction=0.25), str(tmp_path / "validation")
  )
  assert held["evaluated_split"] == "validation"
  assert held["num_train"] == plain.num_train - round(0.25 * plain.num_train)


@pytest.mark.parametrize("fraction", [1.0, 1.5, -0.1, True])
def test_fractions_outside_zero_one_are_refused_naming_the_value(fraction):
  with pytest.raises(ValueError, match=r"validation_fraction=.*valid: 0\.0"):
    spec_lib.load_data(tiny_config(validation_fraction=fraction))


def test_a_split_too_small_for_the_batch_or_empty_is_refused():
  config = tiny_config(validation_fraction=0.9, variant="lb")
  config.regime.epochs = 4.0
  dataset = spec_lib.load_data(config)  # 512 * 0.1 kept = 51 < the batch of 64
  with pytest.raises(
    ValueError, match="keeps 51 training examples, fewer than the run's batch of 64"
  ):
    training.make_plan(config, dataset.num_train, num_devices=1)
  with pytest.raises(ValueError, match="holds out 0"):
    validation.split_sizes(10, 0.01)
  with pytest.raises(ValueError, match="validation_seed"):
    spec_lib.load_data(tiny_config(validation_fraction=0.1, validation_seed=-1))
