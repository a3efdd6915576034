"""The reference protocol, complete: each Table 1 column as its bigBatch script runs it.

The expected numbers are computed here from the scripts' own lines and
rules (main_normal.py, main_gbn.py, run_experiments.sh of
github.com/eladhoffer/bigBatch, commit 0c69f28), not from the library's table.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bigbatch_jax import nnx as bnnx
from bigbatch_jax import protocol as protocol_lib
from bigbatch_jax import reference_columns
from bigbatch_jax.ghost_batch_norm import GhostBatchNorm
from bigbatch_jax.training import plan as plan_lib
from bigbatch_jax.training import spec as spec_lib
from experiments.configs import f1
from tests.test_training import tiny_config

MNIST_TRAIN = 60_000
LR = 0.1  # mnist_f1's regime: 0.1, x0.1 at epochs 10, 20, 30

# run_experiments.sh's MNIST lines, verbatim; SB and +RA have none, so their
# commands are the ones the column's flags give (SB: main_normal.py's defaults).
SCRIPT_LINES = {
  "sb": "python main_normal.py --model mnist_f1 --dataset mnist --epochs 50 --b 128",
  "lb": "python main_normal.py --model mnist_f1 --dataset mnist --save "
  "mnist_baseline_bs2048_no_lr_fix --epochs 50 --b 2048 --no-lr_bb_fix;",
  "lb+lr": "python main_normal.py --model mnist_f1 --dataset mnist --save mnist_baseline_bs2048 "
  "--epochs 50 --b 2048 --lr_bb_fix;",
  "lb+lr+gbn": "python main_gbn.py --model mnist_f1 --dataset mnist --save "
  "mnist_baseline_bs4096_gbn --epochs 50 --b 4096 --lr_bb_fix --no-regime_bb_fix "
  "--mini-batch-size 128;",
  "lb+lr+gbn+ra": "python main_gbn.py --model mnist_f1 --dataset mnist --epochs 50 --b 4096 "
  "--lr_bb_fix --regime_bb_fix --mini-batch-size 128",
}


def _what_the_script_does(line: str, num_train: int = MNIST_TRAIN) -> dict:
  """The script's argparse defaults and its rule, applied to one command line."""
  words = line.rstrip(";").split()
  script = words[1]
  args = {"b": None, "mini": 128, "lr_bb_fix": True, "regime_bb_fix": False, "epochs": 200}
  for i, word in enumerate(words):
    if word == "--b":
      args["b"] = int(words[i + 1])
    elif word == "--mini-batch-size":
      args["mini"] = int(words[i + 1])
    elif word == "--epochs":
      args["epochs"] = int(words[i + 1])
    elif word in ("--lr_bb_fix", "--no-lr_bb_fix"):
      args["lr_bb_fix"] = word == "--lr_bb_fix"
    elif word in ("--regime_bb_fix", "--no-regime_bb_fix"):
      args["regime_bb_fix"] = word == "--regime_bb_fix"
  b = args["b"]
  unit = 256 if script == "main_normal.py" else args["mini"]  # (batch_size / 256.) or mini
  lr = LR * (b / unit) ** 0.5 if args["lr_bb_fix"] else LR
  stretch = math.ceil(b / unit) if args["regime_bb_fix"] else 1
  epochs = args["epochs"] * stretch
  return {
    "batch": b,
    "ghost": args["mini"] if script == "main_gbn.py" else None,
    "lr": lr,
    "epochs": epochs,
    "drops": tuple(e * stretch for e in (10, 20, 30)),
    # DataLoader(drop_last=False): ceil(N / B) batches an epoch.
    "updates": epochs * math.ceil(num_train / b),
  }


def _reference_plan(column: str, **keys):
  config = f1.get_config(column)
  config.protocol = "reference"
  config.update(keys)
  return plan_lib.make_plan(config, num_train=MNIST_TRAIN, num_devices=1)


@pytest.mark.parametrize("column", list(SCRIPT_LINES))
def test_each_column_runs_as_its_script(column):
  expected = _what_the_script_does(SCRIPT_LINES[column])
  plan = _reference_plan(column)
  assert plan.batch_size == expected["batch"]
  assert plan.ghost_batch_size == expected["ghost"]
  assert LR * plan.lr_scale == pytest.approx(expected["lr"], rel=1e-12)
  assert plan.regime.epochs == expected["epochs"]
  assert plan.regime.drop_epochs == expected["drops"]
  assert plan.num_steps == expected["updates"]
  assert plan.partial_last_batch and plan.running_variance == "unbiased" and plan.bn_scale_uniform
  assert plan.script_command.startswith(f"python {SCRIPT_LINES[column].split()[1]}")


def test_table_entries_from_run_experiments_match_its_lines():
  row = reference_columns.SCRIPT_COLUMNS["f1"]
  for column, entry in row.columns.items():
    expected = _what_the_script_does(SCRIPT_LINES[column])
    assert entry.batch_size == expected["batch"] and entry.mini_batch_size == expected["ghost"]
    assert (entry.source == "run_experiments.sh") == SCRIPT_LINES[column].endswith(";")
  assert not row.columns["sb"].source.startswith("run_experiments")


def test_regime_adaptation_under_reference_takes_sbs_number_of_updates():
  sb, ra = _reference_plan("sb"), _reference_plan("lb+lr+gbn+ra")
  # main_gbn.py's stretch ceil(4096 / 128) = 32 = B_L / B_S: SB's epochs x 32 ...
  assert ra.regime.epochs == 32 * sb.regime.epochs
  # ... and, with batches crossing epochs, exactly SB's updates (23 438).
  whole = {"partial_last_batch": False}
  assert _reference_plan("lb+lr+gbn+ra", **whole).num_steps == 23_438
  assert _reference_plan("sb", **whole).num_steps == 23_438
  # With each epoch's partial batch kept (the DataLoader's), 1600 x 15 against 50 x 469.
  assert (ra.num_steps, sb.num_steps) == (24_000, 23_450)
  # The fitted selection keeps main_normal.py's ceil(4096 / 256) = 16: half the updates.
  config = f1.get_config("lb+lr+gbn+ra")
  config.protocol = "reference-fitted"
  assert plan_lib.make_plan(config, MNIST_TRAIN, 1).num_steps == 11_719


def test_columns_scale_to_the_table1_preset():
  def plan(column, **keys):
    config = f1.get_config(f"{column},table1")
    config.protocol = "reference"
    config.partial_last_batch = False
    config.update(keys)
    return plan_lib.make_plan(config, num_train=8000, num_devices=1)

  # B_S 64 (ratio 1/2 to the script's 128), B_L 1024 (1/4 of 4096).
  assert plan("sb").lr_scale == pytest.approx(math.sqrt(64 / 128))  # 256 -> 128
  assert plan("lb").batch_size == 512 and plan("lb").lr_scale == 1.0
  assert plan("lb+lr").lr_scale == pytest.approx(2.0)  # sqrt(512 / 128)
  gbn = plan("lb+lr+gbn")
  assert (gbn.batch_size, gbn.ghost_batch_size) == (1024, 64) and gbn.lr_scale == 4.0
  assert plan("lb+lr+gbn+ra").num_steps == plan("sb").num_steps
  with pytest.raises(ValueError, match=r"-b 2048 scaled by .* not a positive integer"):
    plan("lb", large_batch_size=1001)
  with pytest.raises(ValueError, match=r"ghost_batch_size=32, but .* whose ghost batch is 64"):
    plan("lb+lr+gbn", ghost_batch_size=32)


def test_rows_the_table_does_not_name_take_the_flags_pattern():
  column = reference_columns.script_column(
    "vgg", "lb+lr+gbn+ra", base_batch_size=128, large_batch_size=4096, epochs=200.0,
    large_batch=True, ghost_batch_norm=True, lr_scaled=True, regime_adaptation=True,
    ghost_batch_size=None,
  )  # fmt: skip
  assert column.command == (
    "python main_gbn.py -b 4096 --epochs 200 --mini-batch-size 128 --lr_bb_fix --regime_bb_fix"
  )
  assert column.regime_stretch == 32 and column.source.startswith("inferred")
  # LAMB is not a script's: the protocol's default leaves it to the config, explicit is an error.
  lamb = tiny_config("lb+lamb", protocol="reference", ghost_batch_size=None)
  assert plan_lib.make_plan(lamb, 512, 1).script_command == ""
  lamb.script_columns = True
  with pytest.raises(ValueError, match=r"variant 'lb\+lamb' is not one of them"):
    plan_lib.make_plan(lamb, 512, 1)
  # A growing batch keeps whole epochs by default; asking for the partial batch is an error.
  grow = tiny_config("lb+grow", protocol="reference", batch_growth_max=512)
  assert not plan_lib.make_plan(grow, 512, 1).partial_last_batch
  grow.partial_last_batch = True
  with pytest.raises(ValueError, match=r"variant 'lb\+grow' grows the batch"):
    plan_lib.make_plan(grow, 512, 1)


def test_the_protocols_item_sets():
  everything = (
    "momentum_restart", "reference_mnist_augment", "bn_scale_uniform", "script_columns",
    "partial_last_batch", "unbiased_running_variance", "reference_mnist_normalize",
  )  # fmt: skip
  assert protocol_lib.protocol_items("reference") == everything
  assert protocol_lib.protocol_items("reference-fitted") == (
    "momentum_restart", "reference_mnist_augment", "main_normal_lr",
  )  # fmt: skip
  assert protocol_lib.protocol_items("clean") == ()
  config = tiny_config("sb", protocol="reference", main_normal_lr=True)
  with pytest.raises(ValueError, match=r"are two lr rules"):
    protocol_lib.resolve_protocol(config)


# --- the unbiased running variance -------------------------------------------------


def _torch_running_statistics(x, ghost, momentum_torch=0.1):
  """PyTorch's BatchNorm1d in train mode over each chunk in order, written out."""
  mean, var = np.zeros(x.shape[1]), np.ones(x.shape[1])
  for chunk in np.split(np.asarray(x, np.float64), len(x) // ghost):
    mean = (1 - momentum_torch) * mean + momentum_torch * chunk.mean(0)
    var = (1 - momentum_torch) * var + momentum_torch * chunk.var(0, ddof=1)
  return mean, var


def _linen(x, ghost, running_variance):
  norm = GhostBatchNorm(ghost_batch_size=ghost, momentum=0.9, running_variance=running_variance)
  variables = norm.init(jax.random.key(1), x, use_running_average=False)
  y, updates = norm.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  return y, updates["batch_stats"]["mean"], updates["batch_stats"]["var"]


def _nnx(x, ghost, running_variance):
  norm = bnnx.GhostBatchNorm(
    x.shape[1], ghost_batch_size=ghost, momentum=0.9, running_variance=running_variance,
    rngs=nnx.Rngs(0),
  )  # fmt: skip
  y = norm(x, use_running_average=False)
  return y, norm.mean[...], norm.var[...]


@pytest.mark.parametrize("front_end", [_linen, _nnx], ids=["linen", "nnx"])
@pytest.mark.parametrize("ghost", [4, None])
def test_unbiased_running_variance_is_pytorchs_by_hand(front_end, ghost):
  x = jax.random.normal(jax.random.key(0), (12, 3)) * 2.0 + 1.0
  y, mean, var = front_end(x, ghost, "unbiased")
  want_mean, want_var = _torch_running_statistics(x, ghost or len(x))
  np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(var, want_var, rtol=1e-5)
  # The batch is still normalised by the biased variance: outputs as with "biased".
  y_biased, _, var_biased = front_end(x, ghost, "biased")
  np.testing.assert_array_equal(y, y_biased)
  assert not np.allclose(var, var_biased)


def test_unbiased_running_variance_rejects_bad_options():
  x = jnp.ones((8, 3))
  with pytest.raises(ValueError, match=r"running_variance='pytorch'; valid values are"):
    _linen(x, 4, "pytorch")
  with pytest.raises(ValueError, match=r"running_variance='pytorch'; valid values are"):
    bnnx.GhostBatchNorm(3, running_variance="pytorch", rngs=nnx.Rngs(0))
  norm = GhostBatchNorm(ghost_batch_size=4, running_variance="unbiased")
  variables = norm.init(jax.random.key(1), x, use_running_average=False)
  with pytest.raises(ValueError, match=r"with a mask is not supported"):
    norm.apply(variables, x, use_running_average=False, mask=x > 0, mutable=["batch_stats"])


# --- MNIST's Normalize(0.5, 0.5) on every route ------------------------------------


def _write_npz(path, channels=1):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 100, (32, 28, 28, channels), dtype=np.uint8)  # mean ~0.19, not 0.5
  y = np.arange(32) % 10  # every class present (the npz loader refuses absent classes)
  np.savez(path, x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])
  return x


def test_mnist_normalisation_on_the_npz_route(tmp_path):
  x = _write_npz(tmp_path / "mnist.npz")
  spec = f"npz:{tmp_path / 'mnist.npz'}"
  reference = spec_lib.load_data(tiny_config("sb", dataset=spec, protocol="reference"))
  np.testing.assert_array_equal(reference.mean, [0.5])
  np.testing.assert_array_equal(reference.std, [0.5])
  np.testing.assert_allclose(reference.normalize(x[:2]), (x[:2] / 255.0 - 0.5) / 0.5, atol=1e-6)
  clean = spec_lib.load_data(tiny_config("sb", dataset=spec))
  assert abs(float(clean.mean[0]) - x.mean() / 255.0) < 1e-4  # the data's own statistics
  # Colour images are not MNIST: left alone by default, an error when asked for.
  _write_npz(tmp_path / "colour.npz", channels=3)
  colour = f"npz:{tmp_path / 'colour.npz'}"
  assert not np.allclose(
    spec_lib.load_data(tiny_config("sb", dataset=colour, protocol="reference")).mean, 0.5
  )
  with pytest.raises(ValueError, match=r"shape \(28, 28, 3\)"):
    spec_lib.load_data(tiny_config("sb", dataset=colour, reference_mnist_normalize=True))


def test_mnist_normalisation_on_the_tfds_route():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=16):
    for protocol in ("reference", "clean"):
      dataset = spec_lib.load_data(tiny_config("sb", dataset="tfds:mnist", protocol=protocol))
      np.testing.assert_array_equal(dataset.mean, [0.5])
      np.testing.assert_array_equal(dataset.std, [0.5])
      x = dataset.x_train[:4]
      np.testing.assert_allclose(dataset.normalize(x), x / 127.5 - 1.0, atol=1e-6)
