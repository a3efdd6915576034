"""The bigBatch reference code's protocol artefacts against closed forms."""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigbatch_jax import data, regimes, training
from bigbatch_jax import protocol as protocol_lib
from bigbatch_jax.data import augment
from bigbatch_jax.data.reference_mnist import reference_mnist_augmentation
from bigbatch_jax.ghost_batch_norm import GhostBatchNorm
from bigbatch_jax.models import layers
from bigbatch_jax.training import optimizer, setup
from bigbatch_jax.training import plan as plan_lib
from bigbatch_jax.training import spec as spec_lib
from bigbatch_jax.training.variants import parse_variant
from bigbatch_jax.transforms import restart_momentum_at, scale_by_batch_size
from experiments.configs import f1
from tests.test_training import _final_params, tiny_config
from tests.tiny_run import REPO

LR, MOMENTUM, WD = 0.1, 0.9, 1e-2


def _sgd_chain(lr=LR, nesterov=False):
  return optax.chain(
    optax.add_decayed_weights(WD), optax.sgd(lr, momentum=MOMENTUM, nesterov=nesterov)
  )


def _traces(state):
  nodes = jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, optax.TraceState))
  return [n.trace for n in nodes if isinstance(n, optax.TraceState)]


def _run(tx, grads, params):
  state = tx.init(params)
  update = jax.jit(tx.update)
  outputs, states = [], []
  for g in grads:
    states.append(state)
    updates, state = update(g, state, params)
    outputs.append(updates)
  return outputs, states


def _grads(num, key=0):
  keys = jax.random.split(jax.random.key(key), num)
  return [{"w": jax.random.normal(k, (3, 2)), "b": jax.random.normal(k, (2,)) + 1} for k in keys]


PARAMS = {"w": jnp.full((3, 2), 0.5), "b": jnp.arange(2.0)}


@pytest.mark.parametrize("nesterov", [False, True])
def test_restart_zeroes_the_trace_and_takes_pytorchs_first_step(nesterov):
  restarts = (0, 3, 4, 7)
  grads = _grads(9)
  tx = restart_momentum_at(_sgd_chain(nesterov=nesterov), restarts)
  outputs, states = _run(tx, grads, PARAMS)
  plain_outputs, _ = _run(_sgd_chain(nesterov=nesterov), grads, PARAMS)
  for t, (g, updates) in enumerate(zip(grads, outputs, strict=True)):
    if t in restarts:
      # PyTorch's first step with a fresh buffer: buf = d_p = g + wd w, and
      # Nesterov d_p + m buf; the step is -lr times that.
      direction = jax.tree.map(lambda gi, w: gi + WD * w, g, PARAMS)
      step = -LR * (1 + MOMENTUM if nesterov else 1.0)
      expected = jax.tree.map(lambda d, step=step: step * d, direction)
      jax.tree.map(
        functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7), updates, expected
      )
    else:
      assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(_traces(states[t])))
  # Between restarts it is the plain momentum chain: the first two updates agree.
  for t in (0, 1, 2):
    jax.tree.map(np.testing.assert_array_equal, outputs[t], plain_outputs[t])
  assert not np.allclose(outputs[3]["w"], plain_outputs[3]["w"])


def test_restart_keeps_the_other_state_running():
  # A schedule's count must run on through restarts (the reference's regime does).
  schedule = optax.piecewise_constant_schedule(LR, {2: 0.5})
  tx = restart_momentum_at(_sgd_chain(lr=schedule), (0, 2, 3))
  grads = _grads(4)
  outputs, _ = _run(tx, grads, PARAMS)
  for t in (2, 3):
    expected = -LR * 0.5 * (grads[t]["b"] + WD * PARAMS["b"])
    np.testing.assert_allclose(outputs[t]["b"], expected, rtol=1e-6)


def test_restart_off_is_bit_identical_to_the_plain_chain():
  grads = _grads(6)
  outputs, _ = _run(restart_momentum_at(_sgd_chain(), ()), grads, PARAMS)
  plain, _ = _run(_sgd_chain(), grads, PARAMS)
  for a, b in zip(outputs, plain, strict=True):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_restart_needs_a_momentum_trace_and_valid_steps():
  with pytest.raises(ValueError, match="no momentum trace"):
    restart_momentum_at(optax.adam(0.1), (0,)).init(PARAMS)
  with pytest.raises(ValueError, match=">= 0"):
    restart_momentum_at(_sgd_chain(), (-1,))


@pytest.mark.parametrize(
  ("num_examples", "phases", "num_steps", "expected"),
  [
    (60_000, 4096, 40, (0, 15, 30)),  # F1 at B_L: every ~14.6 updates
    (10, 4, 12, (0, 3, 5, 8, 10)),  # first update starting at or after k * 10
    (10, [(0, 4), (3, 8)], 8, (0, 3, 4, 6, 7)),  # a growing batch
    (10, [(0, 4), (3, 25)], 8, (0, 3, 4, 5, 6, 7)),  # a batch above the epoch
    (100, 10, 30, (0, 10, 20)),  # batches aligned with epochs
  ],
)
def test_epoch_first_steps_is_the_first_update_starting_in_each_epoch(
  num_examples, phases, num_steps, expected
):
  assert regimes.epoch_first_steps(num_examples, phases, num_steps) == expected


def test_epoch_first_steps_rejects_bad_phases():
  with pytest.raises(ValueError, match="step 0"):
    regimes.epoch_first_steps(10, [(1, 4)], 5)


def test_black_pixel_in_normalized_units():
  np.testing.assert_allclose(
    augment.black_pixel(augment.REFERENCE_MNIST_MEAN, augment.REFERENCE_MNIST_STD), [-1.0]
  )
  np.testing.assert_allclose(augment.black_pixel(0.1307, 0.3081), [-0.1307 / 0.3081], rtol=1e-6)
  with pytest.raises(ValueError, match="positive std"):
    augment.black_pixel(0.5, 0.0)


def test_reference_mnist_augment_pixels_and_fill():
  rng_x = np.random.default_rng(0)
  x = rng_x.normal(size=(64, 28, 28, 1)).astype(np.float32)
  fill = augment.black_pixel(0.5, 0.5)
  out = augment.reference_mnist_augment(x, np.random.default_rng(3), fill=fill)
  # Replay the draws: crop offsets (rows, cols) in [0, 4], then flips.
  replay = np.random.default_rng(3)
  offsets = replay.integers(0, 5, size=(2, 64))
  flips = replay.random(64) < 0.5
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0)
  for i in range(64):
    crop = padded[i, offsets[0, i] : offsets[0, i] + 28, offsets[1, i] : offsets[1, i] + 28]
    np.testing.assert_array_equal(out[i], crop[:, ::-1] if flips[i] else crop)
  assert out.shape == x.shape and out.dtype == x.dtype
  # Every padded pixel is black: -1 under (x - 0.5) / 0.5, never CIFAR's 0.
  assert np.any(out == -1.0) and not np.any(out == 0.0)


def test_reference_mnist_augment_fill_per_channel_and_bad_fill():
  x = np.zeros((8, 6, 6, 2), np.float32) + 5
  fill = np.asarray([-1.0, -2.0], np.float32)
  out = augment.reference_mnist_augment(x, np.random.default_rng(1), fill=fill)
  values = {tuple(v) for v in out.reshape(-1, 2).tolist()}
  assert values <= {(5.0, 5.0), (-1.0, -2.0)} and (-1.0, -2.0) in values
  with pytest.raises(ValueError, match="one value per channel"):
    augment.reference_mnist_augment(x, np.random.default_rng(1), fill=[1.0, 2.0, 3.0])


def test_legacy_bn_scale_init_is_uniform_on_the_unit_interval():
  draws = np.asarray(layers.legacy_torch_bn_scale_init(jax.random.key(0), (100_000,)))
  assert draws.min() >= 0.0 and draws.max() < 1.0
  assert draws.min() < 0.01 and draws.max() > 0.99
  assert abs(draws.mean() - 0.5) < 0.01 and abs(draws.var() - 1 / 12) < 0.002


def test_legacy_bn_scale_init_as_the_norm_layers_scale_init():
  norm = GhostBatchNorm(use_running_average=False, scale_init=layers.legacy_torch_bn_scale_init)
  variables = norm.init(jax.random.key(1), jnp.ones((4, 512)))
  scale = np.asarray(variables["params"]["scale"])
  assert scale.shape == (512,) and scale.min() >= 0 and scale.max() < 1 and scale.std() > 0.2


def _protocol_config(protocol="clean", **keys):
  import ml_collections

  config = ml_collections.ConfigDict(
    {"protocol": protocol, **{k: None for k in protocol_lib.ARTEFACT_KEYS}}
  )
  config.update(keys)
  return config


def test_protocols_switch_their_artefacts():
  clean = protocol_lib.resolve_protocol(_protocol_config("clean"))
  assert not (clean.momentum_restart or clean.reference_mnist_augment or clean.main_normal_lr)
  reference = protocol_lib.resolve_protocol(_protocol_config("reference-fitted"))
  assert reference.momentum_restart and reference.reference_mnist_augment
  assert reference.main_normal_lr and not reference.bn_scale_uniform
  assert reference.explicit == frozenset()
  # Each artefact alone, on either protocol.
  alone = protocol_lib.resolve_protocol(_protocol_config("clean", bn_scale_uniform=True))
  assert alone.bn_scale_uniform and not alone.momentum_restart
  assert alone.explicit == {"bn_scale_uniform"}
  off = protocol_lib.resolve_protocol(_protocol_config("reference-fitted", momentum_restart=False))
  assert not off.momentum_restart and off.main_normal_lr


def test_main_normal_lr_base_and_stretch():
  clean = protocol_lib.resolve_protocol(_protocol_config("clean"))
  reference = protocol_lib.resolve_protocol(_protocol_config("reference-fitted"))
  assert clean.lr_base_batch_size(128) == 128 and reference.lr_base_batch_size(128) == 256
  assert clean.regime_stretch(4096, 128) == 32.0
  assert reference.regime_stretch(4096, 128) == 16.0 and reference.regime_stretch(300, 128) == 2.0


def test_protocol_rejects_bad_values():
  with pytest.raises(ValueError, match=r"config.protocol='paper'; valid: \('clean', 'reference',"):
    protocol_lib.resolve_protocol(_protocol_config("paper"))
  with pytest.raises(ValueError, match=r"config\.momentum_restart must be True, False or None"):
    protocol_lib.resolve_protocol(_protocol_config(momentum_restart="yes"))


class _Images:
  name = "tfds:mnist"
  input_shape = (28, 28, 1)
  mean, std = np.asarray([0.1307], np.float32), np.asarray([0.3081], np.float32)


class _Vectors:
  name = "mnist1d"
  input_shape = (40,)
  mean = std = None


def test_reference_mnist_augmentation_applies_to_images_only():
  reference = protocol_lib.resolve_protocol(_protocol_config("reference"))
  fn = reference_mnist_augmentation(reference, _Images(), "none")
  x = np.full((4, 28, 28, 1), 3.0, np.float32)
  out = fn(x, np.random.default_rng(0))
  black = np.float32(-0.1307) / np.float32(0.3081)
  assert set(np.unique(out).tolist()) == {3.0, float(black)}
  assert reference_mnist_augmentation(reference, _Vectors(), "none") is None
  clean = protocol_lib.resolve_protocol(_protocol_config("clean"))
  assert reference_mnist_augmentation(clean, _Images(), "none") is None
  explicit = protocol_lib.resolve_protocol(_protocol_config(reference_mnist_augment=True))
  with pytest.raises(ValueError, match=r"mnist1d has examples of shape \(40,\)"):
    reference_mnist_augmentation(explicit, _Vectors(), "none")
  with pytest.raises(ValueError, match=r"config\.augment='cifar' and the reference MNIST"):
    reference_mnist_augmentation(reference, _Images(), "cifar")


def test_the_items_table_decides_where_each_item_applies():
  # The protocols' item sets are the table's defaults.
  for name in protocol_lib.PROTOCOLS:
    on = tuple(i.key for i in protocol_lib.PROTOCOL_ITEMS if i.default(name))
    assert protocol_lib.protocol_items(name) == on
  lamb = protocol_lib.RunKind.of(parse_variant("lb+lamb"), 0.9)
  grow = protocol_lib.RunKind.of(parse_variant("lb+grow"), 0.9)
  sgd = protocol_lib.RunKind.of(parse_variant("lb+lr"), 0.9)
  reference = protocol_lib.resolve_protocol(_protocol_config("reference"))
  clean = protocol_lib.resolve_protocol(_protocol_config("clean"))
  for key, skipped in (("momentum_restart", lamb), ("script_columns", lamb)):
    assert reference.applies(key, sgd) and not clean.applies(key, sgd)
    # The protocol's default skips a run it does not apply to; asked for, it is an error.
    assert not reference.applies(key, skipped)
    explicit = protocol_lib.resolve_protocol(_protocol_config("clean", **{key: True}))
    with pytest.raises(ValueError, match=rf"config\.{key} .*variant|config\.{key} .*none"):
      explicit.applies(key, skipped)
  assert not reference.applies("partial_last_batch", grow) and reference.applies(
    "script_columns", sgd
  )
  images, vectors = (
    protocol_lib.RunKind.of(dataset=_Images()),
    protocol_lib.RunKind.of(dataset=_Vectors()),
  )
  assert reference.applies("reference_mnist_augment", images)
  assert not reference.applies("reference_mnist_augment", vectors)
  assert not reference.applies(
    "reference_mnist_normalize", images
  )  # not a dataclass: not in memory
  # Items without a rule apply to every run; a rule asked about the wrong half is refused.
  assert reference.applies("bn_scale_uniform", protocol_lib.RunKind())
  with pytest.raises(ValueError, match=r"applies by the run's data"):
    reference.applies("reference_mnist_augment", sgd)
  with pytest.raises(ValueError, match=r"no protocol item 'augment'; valid: momentum_restart"):
    reference.applies("augment", sgd)


def test_the_reference_leaves_ghost_noise_its_own_column_and_variance():
  config = f1.get_config("lb+lr+gni,quick")
  config.protocol = "reference"
  plan = plan_lib.make_plan(config, 8000, num_devices=1)
  assert plan.script_command == "" and plan.ghost_batch_size == plan.base_batch_size
  assert plan.running_variance == "biased"  # GNI keeps flax's biased running variance
  for key, words in (
    ("script_columns", "is not one of them"),
    ("unbiased_running_variance", "Ghost Noise"),
  ):
    explicit = config.copy_and_resolve_references()
    explicit[key] = True
    with pytest.raises(ValueError, match=rf"config\.{key} .*variant 'lb\+lr\+gni' .*{words}"):
      plan_lib.make_plan(explicit, 8000, num_devices=1)


def test_a_run_resolves_its_protocol_once(tmp_path, monkeypatch):
  original, calls = protocol_lib.resolve_protocol, []

  def counting(config):
    calls.append(config.protocol)
    return original(config)

  # Every module that imported the function by name gets the counting one.
  for module in list(sys.modules.values()):
    if getattr(module, "resolve_protocol", None) is original:
      monkeypatch.setattr(module, "resolve_protocol", counting)
  config = tiny_config("lb+lr+gbn", protocol="reference-fitted", num_epochs=0.25)
  training.train_and_evaluate(config, str(tmp_path))
  assert calls == ["reference-fitted"]


@pytest.mark.parametrize(
  "first, second",
  [("bigbatch_jax.protocol", "bigbatch_jax.data"), ("bigbatch_jax.data", "bigbatch_jax.protocol")],
)
def test_protocol_and_data_import_in_either_order(first, second):
  # Fresh interpreters: the protocol imports nothing of bigbatch_jax.data, whose
  # reference_mnist imports the protocol, so either order imports both.
  subprocess.run([sys.executable, "-c", f"import {first}, {second}"], check=True, cwd=REPO)
  alone = "import sys, bigbatch_jax.protocol; assert 'bigbatch_jax.data' not in sys.modules"
  subprocess.run([sys.executable, "-c", alone], check=True, cwd=REPO)


# --- the protocol in the training system ----------------------------------------


def test_clean_protocol_optimizer_is_todays_chain_bit_for_bit():

  plan = plan_lib.make_plan(tiny_config("lb+lr+gbn"), num_train=512, num_devices=1)
  ours = optimizer.make_optimizer(plan, jax.random.key(0))
  today = optax.chain(  # make_optimizer before the protocol and the recipes
    optax.add_decayed_weights(1e-4),
    optax.sgd(plan.regime.schedule(plan.steps_per_epoch), momentum=0.9),
    scale_by_batch_size(64, 16, "sqrt"),
  )
  assert jax.tree.structure(ours.init(PARAMS)) == jax.tree.structure(today.init(PARAMS))
  grads = _grads(12)
  for a, b in zip(_run(ours, grads, PARAMS)[0], _run(today, grads, PARAMS)[0], strict=True):
    jax.tree.map(np.testing.assert_array_equal, a, b)
  assert plan.momentum_restart_steps == () and not plan.bn_scale_uniform


def test_fitted_protocol_plan_on_the_papers_f1():

  config = f1.get_config("lb+lr+gbn+ra")
  config.protocol = "reference-fitted"
  plan = plan_lib.make_plan(config, num_train=60_000, num_devices=1)
  # main_normal.py: lr x sqrt(4096 / 256) = 4, regime stretched by ceil(4096 / 256) = 16.
  assert plan.lr_scale == pytest.approx(4.0) and plan.lr_base == 256
  assert plan.regime.epochs == 800 and plan.regime.drop_epochs == (160, 320, 480)
  # The momentum restarts at the first update of each of the 800 epochs.
  steps = plan.momentum_restart_steps
  assert len(steps) == 800 and steps[:3] == (0, 15, 30)
  config.momentum_restart = False
  assert plan_lib.make_plan(config, num_train=60_000, num_devices=1).momentum_restart_steps == ()


def test_reference_plans_optimizer_restarts_the_momentum_at_each_epoch():

  config = tiny_config("lb+lr", protocol="reference-fitted", **{"regime.drop_epochs": ()})
  plan = plan_lib.make_plan(config, num_train=512, num_devices=1)
  assert plan.momentum_restart_steps == (0, 8)
  grads = _grads(10)
  outputs, _ = _run(optimizer.make_optimizer(plan, jax.random.key(0)), grads, PARAMS)
  lr = 0.05 * np.sqrt(64 / 256)  # main_normal.py's rule: (B / 256)**0.5
  for t in (0, 8):  # PyTorch's first step: -lr (g + wd w)
    expected = -lr * (grads[t]["w"] + 1e-4 * PARAMS["w"])
    np.testing.assert_allclose(outputs[t]["w"], expected, rtol=1e-5)
  assert not np.allclose(outputs[7]["w"], -lr * (grads[7]["w"] + 1e-4 * PARAMS["w"]))


def test_momentum_restart_rejects_a_run_without_momentum():

  with pytest.raises(ValueError, match=r"config\.momentum_restart zeroes the SGD"):
    plan_lib.make_plan(tiny_config("lb+lamb", momentum_restart=True), 512, 1)
  # The reference protocol's default skips a run with no momentum to restart.
  lamb = plan_lib.make_plan(tiny_config("lb+lamb", protocol="reference"), 512, 1)
  assert lamb.momentum_restart_steps == ()


@pytest.mark.slow  # five tiny runs, ~70 s on two cores
def test_reference_protocol_run_resumes_exactly_and_four_devices_equal_one(tmp_path):

  config = tiny_config("lb+lr+gbn", protocol="reference-fitted", num_epochs=2.0)
  plan = training.make_plan(config, num_train=512, num_devices=1)
  assert plan.momentum_restart_steps == (0, 8)  # 512 examples at batch 64
  straight = str(tmp_path / "straight")
  training.train_and_evaluate(config, straight)
  resumed = str(tmp_path / "resumed")
  config.stop_after_steps = 5
  training.train_and_evaluate(config, resumed)
  config.stop_after_steps = None
  training.train_and_evaluate(config, resumed)
  jax.tree.map(np.testing.assert_array_equal, _final_params(straight), _final_params(resumed))
  config.num_devices = 4
  four = str(tmp_path / "four")
  training.train_and_evaluate(config, four)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
    _final_params(straight),
    _final_params(four),
  )
  # The restart changes the run: without it the parameters differ.
  config.num_devices, config.momentum_restart = None, False
  plain = str(tmp_path / "plain")
  training.train_and_evaluate(config, plain)
  assert not np.allclose(
    _final_params(straight)[0]["fc1"]["kernel"], _final_params(plain)[0]["fc1"]["kernel"]
  )


def test_bn_scale_uniform_reaches_the_models_norm_layers():

  config = tiny_config("lb+lr+gbn", bn_scale_uniform=True)
  spec = spec_lib.resolve(config, num_train=512, num_devices=1)
  model = setup.build_model(spec, 10, setup.norm_layer(spec, axis_name=None))
  variables = model.init(jax.random.key(0), jnp.ones((8, 784)), train=False)
  scales = [
    np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
    if "scale" in jax.tree_util.keystr(path)
  ]
  assert scales and all(s.min() >= 0 and s.max() < 1 and s.std() > 0.1 for s in scales)


def test_reference_protocol_augments_mnist_images_in_the_input_pipeline():

  x = np.zeros((4, 28, 28, 1), np.uint8)
  y = np.zeros(4, np.int32)
  images = data.ArrayDataset("tfds:mnist", x, y, x, y, 10, np.float32([0.5]), np.float32([0.5]))
  config = tiny_config("sb", protocol="reference")
  pipeline = data.input_pipeline(
    spec_lib.data_spec(config), images, protocol_lib.resolve_protocol(config)
  )
  batch = images.normalize(x)
  out = pipeline.augment(batch, np.random.default_rng(0))
  assert set(np.unique(out).tolist()) <= {-1.0} and out.shape == batch.shape
  clean = protocol_lib.resolve_protocol(tiny_config("sb"))
  assert data.input_pipeline(spec_lib.data_spec(tiny_config("sb")), images, clean).augment is None
