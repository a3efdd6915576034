"""Tests of the model zoo (bigbatch_jax.models).

Parameter counts, structure and output shapes come from ``jax.eval_shape``
(tracing only), so every model is checked at its paper input size for no
compute. Each model is also initialized, run in train and eval mode and given
one SGD step for real, once, in a single jitted function (``_train_step_run``,
cached), at a reduced resolution where the architecture allows it. On this
project's 2-core CPU machines compiling that step for ResNet-44, ResNet-50 and
VGG-16 takes most of a minute, so the default run takes them as shallower
members of their families (same classes and code paths, fewer repeated
blocks); the full ones run with ``-m slow``.
"""

import functools
import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict

from bigbatch_jax.models import (
  C1,
  C3,
  F1,
  MODEL_INPUT_SHAPES,
  MODELS,
  VGG,
  AlexNet,
  CifarResNet,
  ImageNetResNet,
  ResNet44,
  ResNet50,
  WideResNet,
  get_model,
  torch_batch_norm,
)

BATCH = 2
NAMES = sorted(MODELS)
DROPOUT_MODELS = {"c1", "c3", "vgg", "alexnet"}

# Smaller than the paper's 224x224 for the real runs, so the forward/backward
# pass is cheap; both architectures pool globally (ResNet-50) or flatten whatever
# map is left (AlexNet), so every layer still runs. Both keep a 2x2 map to
# the end: at 1x1, each norm of the last stage would see only 2 samples, and
# their tiny spread blows the gradient up (BN's gradient scales with 1/std).
TEST_INPUT_SHAPES = {**MODEL_INPUT_SHAPES, "alexnet": (95, 95, 3), "resnet50": (64, 64, 3)}
# "cifar_resnet" is ResNet-44 by default, tested already; a shallow one here.
TEST_KWARGS = {"cifar_resnet": {"depth": 8}}

# Norm layers per model (their names all start with "bn").
EXPECTED_NORM_LAYERS = {
  "f1": 5,
  "c1": 4,
  "c3": 4,
  "cifar_resnet": 1 + 2 * 3 + 2,  # stem, 2 per block, 2 projection shortcuts
  "resnet44": 1 + 2 * 21 + 2,
  "vgg": 13,
  "wrn16_4": 1 + 2 * 6 + 2,
  "alexnet": 7,
  "resnet50": 1 + 3 * 16 + 4,
}

# These tests check values, not speed, and compiling the backward passes is
# most of their time: without XLA's CPU optimizations and fusion emitters it
# takes about half the CPU time (measured on the 2-core CPU machines).
# jax 0.12's XLA no longer knows the fusion-emitter option and refuses it.


def _fast_compile_options() -> dict:
  options = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
  try:
    jax.jit(lambda x: x + 1, compiler_options=options)(jnp.ones(1)).block_until_ready()
  except jax.errors.JaxRuntimeError as error:
    if "xla_cpu_use_fusion_emitters" not in str(error):
      raise
    del options["xla_cpu_use_fusion_emitters"]
  return options


FAST_COMPILE = _fast_compile_options()


# The real runs: (registry name, architecture overrides). A shallow member of
# a family stands for the full model in the default run.
REAL_RUNS = [
  pytest.param("f1", (), id="f1"),
  pytest.param("c1", (), id="c1"),
  pytest.param("c3", (), id="c3"),
  pytest.param("cifar_resnet", (("depth", 8),), id="cifar_resnet8"),
  pytest.param("resnet44", (), id="resnet44", marks=pytest.mark.slow),
  pytest.param("vgg", (("depth", 11),), id="vgg11"),
  pytest.param("vgg", (), id="vgg16", marks=pytest.mark.slow),
  pytest.param("wrn16_4", (), id="wrn16_4"),
  pytest.param("alexnet", (), id="alexnet"),
  pytest.param("resnet50", (("stage_sizes", (1, 1, 1, 1)),), id="resnet50_1111"),
  pytest.param("resnet50", (), id="resnet50", marks=pytest.mark.slow),
]


def _model(name, norm=torch_batch_norm, **overrides):
  """The registered model with the test's overrides, built from its class."""
  spec = MODELS[name]
  kwargs = {**spec.fixed_kwargs, **TEST_KWARGS.get(name, {}), **overrides}
  return spec.constructor(num_classes=spec.num_classes, norm=norm, **kwargs)


def _inputs(shape, seed=1):
  return jax.random.normal(jax.random.key(seed), (BATCH, *shape))


def _abstract_variables(model, shape):
  x = jax.ShapeDtypeStruct((BATCH, *shape), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def _at_paper_input_size(name):
  """The model, its abstract variables and an abstract input batch at the paper's size."""
  model = _model(name)
  shape = MODEL_INPUT_SHAPES[name]
  x = jax.ShapeDtypeStruct((BATCH, *shape), jnp.float32)
  return model, _abstract_variables(model, shape), x


def _num_params(model, shape):
  params = _abstract_variables(model, shape)["params"]
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def _paths(tree):
  """Set of '/'-joined module paths of a variable collection's leaves' parents."""
  return {"/".join(path[:-1]) for path in flatten_dict(tree)}


# --------------------------------------------------------------------------
# Parameter counts.


def test_f1_param_count_by_hand():
  hidden_dense = 784 * 512 + 512 + 4 * (512 * 512 + 512)  # Dense layers keep biases
  norms = 5 * 2 * 512  # scale and bias
  classifier = 512 * 10 + 10
  assert _num_params(F1(10), (28, 28, 1)) == hidden_dense + norms + classifier == 1_462_794


def test_f1_shrinks_and_takes_vectors():
  # MNIST-1D: 40 features, the small-experiment width and depth.
  expected = (40 * 32 + 32) + (32 * 32 + 32) + 2 * 2 * 32 + (32 * 10 + 10)
  assert _num_params(F1(10, hidden=32, depth=2), (40,)) == expected


def test_c1_c3_param_count_by_hand():
  convs = 3 * 64 * 25 + 64 * 64 * 25  # no biases
  hidden = 64 * 7 * 7 * 384 + 384 * 192  # no biases
  norms = 2 * (64 + 64 + 384 + 192)
  assert _num_params(C1(10), (32, 32, 3)) == convs + hidden + norms + 192 * 10 + 10
  assert _num_params(C3(100), (32, 32, 3)) == convs + hidden + norms + 192 * 100 + 100


def test_resnet44_param_count_matches_he_et_al():
  count = _num_params(ResNet44(10), (32, 32, 3))
  # He et al. 2016, Table 6: 0.66M. bigBatch's 1x1 projection shortcuts add
  # 16*32 + 32*64 weights and 2*(32+64) norm parameters to option A's count.
  assert abs(count - 0.66e6) / 0.66e6 < 0.01
  assert count - (16 * 32 + 32 * 64 + 2 * (32 + 64)) == 658_586
  assert _num_params(CifarResNet(10, depth=44), (32, 32, 3)) == count


def test_wrn16_4_param_count_matches_zagoruyko():
  count = _num_params(WideResNet(100, depth=16, widen_factor=4), (32, 32, 3))
  assert abs(count - 2.7e6) / 2.7e6 < 0.04  # Zagoruyko & Komodakis 2016: 2.7M
  # By hand, bigBatch's layout: stem 3->64, stages of 2 blocks at 64/128/256
  # channels, projections into stages 2 and 3 only.
  convs = 27 * 64 + 4 * 9 * 64 * 64
  convs += 9 * 64 * 128 + 3 * 9 * 128 * 128 + 64 * 128
  convs += 9 * 128 * 256 + 3 * 9 * 256 * 256 + 128 * 256
  norms = 2 * (64 + 4 * 64 + 5 * 128 + 5 * 256)
  assert count == convs + norms + 256 * 100 + 100


def test_resnet50_param_count_matches_published():
  count = _num_params(ResNet50(1000), (224, 224, 3))
  assert count == 25_557_032  # torchvision's resnet50, He et al.'s "25.6M"
  caltech = _num_params(ResNet50(102), (224, 224, 3))
  assert count - caltech == 2048 * (1000 - 102) + (1000 - 102)


def test_vgg16_param_count_by_hand():
  widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
  in_channels = [3, *widths[:-1]]
  convs = sum(9 * i * o + o for i, o in zip(in_channels, widths))  # convs keep biases
  norms = 2 * sum(widths)
  classifier = (512 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 10 + 10)
  assert _num_params(VGG(10), (32, 32, 3)) == convs + norms + classifier == 33_646_666


def test_alexnet_param_count_by_hand():
  convs = 3 * 64 * 121 + 64 * 192 * 25 + 192 * 384 * 9 + 384 * 256 * 9 + 256 * 256 * 9
  hidden = 256 * 6 * 6 * 4096 + 4096 * 4096
  norms = 2 * (64 + 192 + 384 + 256 + 256 + 4096 + 4096)
  expected = convs + hidden + norms + 4096 * 1000 + 1000
  assert _num_params(AlexNet(1000), (224, 224, 3)) == expected == 61_110_184


# --------------------------------------------------------------------------
# Registry.


def test_get_model_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="unknown model 'resnet18'") as info:
    get_model("resnet18", 10)
  for name in MODELS:
    assert name in str(info.value)


@pytest.mark.parametrize(
  ("name", "kwargs"),
  [
    ("wrn16_4", {"depth": 28}),
    ("resnet44", {"depth": 20}),
    ("resnet50", {"stage_sizes": (3, 4, 23, 3)}),
  ],
)
def test_get_model_rejects_overriding_a_fixed_architecture(name, kwargs):
  with pytest.raises(ValueError, match=next(iter(kwargs))):
    get_model(name, 10, **kwargs)


def test_get_model_builds_the_registered_classes():
  expected = {
    "f1": F1,
    "c1": C1,
    "c3": C3,
    "resnet44": ResNet44,
    "cifar_resnet": CifarResNet,
    "vgg": VGG,
    "wrn16_4": WideResNet,
    "alexnet": AlexNet,
    "resnet50": ResNet50,
  }
  assert set(expected) == set(MODELS) == set(MODEL_INPUT_SHAPES)
  for name, cls in expected.items():
    model = get_model(name, 7, dtype=jnp.bfloat16)
    assert type(model) is cls
    assert (model.num_classes, model.norm, model.dtype) == (7, torch_batch_norm, jnp.bfloat16)
  assert get_model("cifar_resnet", 10, depth=20).depth == 20
  wrn = get_model("wrn16_4", 100)
  assert (wrn.depth, wrn.widen_factor) == (16, 4)


@pytest.mark.parametrize(
  ("model", "shape", "match"),
  [
    (CifarResNet(10, depth=45), (32, 32, 3), "6n\\+2"),
    (WideResNet(100, depth=15), (32, 32, 3), "6n\\+4"),
    (WideResNet(100, widen_factor=0), (32, 32, 3), "widen_factor"),
    (VGG(10, depth=12), (32, 32, 3), "depth"),
    (C1(10), (32, 32), "NHWC"),
    (ResNet50(10), (3072,), "NHWC"),
    (ImageNetResNet(10, stage_sizes=(3, 4, 6)), (64, 64, 3), "stage_sizes"),
  ],
)
def test_bad_configurations_raise_clear_errors(model, shape, match):
  with pytest.raises(ValueError, match=match):
    _abstract_variables(model, shape)


# --------------------------------------------------------------------------
# Structure and shapes at the paper's input size (tracing only).


@pytest.mark.parametrize("name", NAMES)
def test_norm_layers_named_consistently(name):
  variables = _abstract_variables(_model(name), MODEL_INPUT_SHAPES[name])
  assert set(variables) == {"params", "batch_stats"}
  norm_paths = _paths(variables["batch_stats"])
  assert len(norm_paths) == EXPECTED_NORM_LAYERS[name]
  assert all(path.split("/")[-1].startswith("bn") for path in norm_paths)
  params = flatten_dict(variables["params"])
  param_norm_paths = {"/".join(p[:-1]) for p in params if p[-2].startswith("bn")}
  assert param_norm_paths == norm_paths
  for path in norm_paths:
    stats = flatten_dict(variables["batch_stats"])
    keys = tuple(path.split("/"))
    assert stats[(*keys, "mean")].shape == stats[(*keys, "var")].shape
    assert params[(*keys, "scale")].shape == stats[(*keys, "mean")].shape


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes_at_paper_input_size(name):
  model, variables, x = _at_paper_input_size(name)
  expected = (BATCH, MODELS[name].num_classes)
  train_out, updates = jax.eval_shape(
    lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}
    ),
    variables,
    x,
  )
  eval_out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert train_out.shape == eval_out.shape == expected
  assert train_out.dtype == eval_out.dtype == jnp.float32
  assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])


# --------------------------------------------------------------------------
# Norm injection.


class MarkerNorm(nn.Module):
  """A stand-in norm that takes the models' norm arguments and marks its call.

  It creates no batch_stats, so any norm layer a model built without going
  through its ``norm`` field would show up as a leftover batch_stats entry;
  and it takes no other argument (momentum, epsilon, ...), so a model passing
  one, which would override the injected partial's, raises a TypeError. The
  name of its marker says which mode the model asked for.
  """

  use_running_average: bool | None = None
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x):
    if self.use_running_average is None:
      raise ValueError("the model did not pass use_running_average to its norm")
    mode = "eval" if self.use_running_average else "train"
    self.variable("marker", mode, jnp.zeros, ())
    return x * self.param("gain", nn.initializers.ones, (x.shape[-1],))


@pytest.mark.parametrize("name", NAMES)
def test_every_norm_layer_goes_through_the_injected_norm(name):
  shape = TEST_INPUT_SHAPES[name]
  reference = _abstract_variables(_model(name), shape)
  model = _model(name, norm=MarkerNorm)
  x = jax.ShapeDtypeStruct((BATCH, *shape), jnp.float32)

  variables = _abstract_variables(model, shape)  # init runs in eval mode
  assert set(variables) == {"params", "marker"}
  assert _paths(variables["marker"]) == _paths(reference["batch_stats"])
  assert {path[-1] for path in flatten_dict(variables["marker"])} == {"eval"}

  # The train path builds the same layers, asking them for batch statistics.
  def train_apply(params, x):
    return model.apply(
      {"params": params}, x, train=True, mutable=["marker"], rngs={"dropout": jax.random.key(0)}
    )

  _, updates = jax.eval_shape(train_apply, variables["params"], x)
  assert _paths(updates["marker"]) == _paths(reference["batch_stats"])
  assert {path[-1] for path in flatten_dict(updates["marker"])} == {"train"}


def test_default_norm_is_pytorch_batch_norm():
  for cls in (F1, C1, C3, CifarResNet, ResNet44, VGG, WideResNet, AlexNet, ResNet50):
    assert cls(10).norm is torch_batch_norm
  layer = torch_batch_norm()
  # PyTorch's BatchNorm momentum 0.1 weights the new batch; Flax's the old value.
  assert (layer.momentum, layer.epsilon) == (0.9, 1e-5)


@functools.cache
def _batch_stats_after_one_train_forward(name, momentum):
  model = _model(name, norm=functools.partial(nn.BatchNorm, momentum=momentum, epsilon=1e-5))
  x = _inputs(TEST_INPUT_SHAPES[name])

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run(x):
    variables = model.init(jax.random.key(0), x, train=False)
    _, updates = model.apply(
      variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}
    )
    return variables, updates["batch_stats"]

  return run(x)


def test_norm_partial_arguments_reach_every_layer():
  # momentum 1 freezes the running statistics; momentum 0 replaces them. F1
  # stands for all models: MarkerNorm above shows that none passes an
  # argument of its own that could override the partial's.
  variables, frozen = _batch_stats_after_one_train_forward("f1", 1.0)
  _, replaced = _batch_stats_after_one_train_forward("f1", 0.0)
  for path, init in flatten_dict(variables["batch_stats"]).items():
    np.testing.assert_array_equal(flatten_dict(frozen)[path], init)
    assert not np.allclose(flatten_dict(replaced)[path], init), path


def test_f1_running_mean_is_the_batch_mean_with_momentum_zero():
  variables, stats = _batch_stats_after_one_train_forward("f1", 0.0)
  x = _inputs(MODEL_INPUT_SHAPES["f1"]).reshape(BATCH, -1)
  fc1 = variables["params"]["fc1"]
  pre_activation = x @ fc1["kernel"] + fc1["bias"]
  np.testing.assert_allclose(stats["bn1"]["mean"], pre_activation.mean(0), atol=1e-5)
  np.testing.assert_allclose(stats["bn1"]["var"], pre_activation.var(0), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------
# A real forward pass, train and eval, and one SGD step, for every model.


@functools.cache
def _train_step_run(name, overrides):
  """Init, train/eval forward passes and one SGD step of a model, in one jit."""
  model = _model(name, **dict(overrides))
  x = _inputs(TEST_INPUT_SHAPES[name])
  labels = jnp.arange(BATCH) % MODELS[name].num_classes
  # Small enough that a batch of 2, whose norm gradients scale with 1/std of
  # two samples, leaves the eval-mode outputs well inside float32.
  tx = optax.sgd(0.01)

  def run(x, init_key, dropout_key, other_dropout_key):
    variables = model.init(init_key, x, train=False)
    params = variables["params"]

    def train_forward(params, key):
      logits, updates = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        x,
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": key},
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, (logits, updates["batch_stats"])

    (loss, (train_logits, new_stats)), grads = jax.value_and_grad(train_forward, has_aux=True)(
      params, dropout_key
    )
    updates, _ = tx.update(grads, tx.init(params))
    new_params = optax.apply_updates(params, updates)

    def eval_forward(variables, key=None):
      rngs = {} if key is None else {"dropout": key}
      return model.apply(variables, x, train=False, rngs=rngs)

    return {
      "loss": loss,
      "train_logits": train_logits,
      # Two plain forward passes that differ in the dropout key only (the
      # gradient's primal above may be evaluated in another order).
      "dropout_logits": train_forward(params, dropout_key)[1][0],
      "other_dropout_logits": train_forward(params, other_dropout_key)[1][0],
      "eval_logits": eval_forward(variables, dropout_key),
      "other_eval_logits": eval_forward(variables, other_dropout_key),
      "new_eval_logits": eval_forward({"params": new_params, "batch_stats": new_stats}),
      "grads_finite": jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
      ),
      "changed": jax.tree.map(lambda a, b: jnp.any(a != b), params, new_params),
      "batch_stats": variables["batch_stats"],
      "new_batch_stats": new_stats,
    }

  keys = [jax.random.key(seed) for seed in (0, 1, 2)]
  return jax.device_get(jax.jit(run, compiler_options=FAST_COMPILE)(x, *keys))


@pytest.mark.parametrize(("name", "overrides"), REAL_RUNS)
def test_train_and_eval_forward(name, overrides):
  result = _train_step_run(name, overrides)
  expected = (BATCH, MODELS[name].num_classes)
  for key in ("train_logits", "eval_logits"):
    assert result[key].shape == expected
    assert result[key].dtype == np.float32
    assert np.all(np.isfinite(result[key])), key
  # Train mode normalizes with batch statistics, eval mode with the running ones.
  assert not np.allclose(result["train_logits"], result["eval_logits"])
  # The running statistics moved towards the batch's, in every norm layer.
  new_stats = flatten_dict(result["new_batch_stats"])
  for path, init in flatten_dict(result["batch_stats"]).items():
    assert not np.allclose(new_stats[path], init), path


@pytest.mark.parametrize(("name", "overrides"), REAL_RUNS)
def test_one_sgd_step(name, overrides):
  result = _train_step_run(name, overrides)
  assert np.isfinite(result["loss"])
  assert result["grads_finite"]
  assert np.all(np.isfinite(result["new_eval_logits"]))
  assert not np.allclose(result["new_eval_logits"], result["eval_logits"])
  # Every weight matrix, convolution kernel and norm parameter moves. (The
  # bias of a layer right before a norm has a zero gradient up to rounding,
  # as the norm subtracts the mean, so it is not required to.)
  for path, moved in flatten_dict(result["changed"]).items():
    if path[-1] in ("kernel", "scale") or path[-2].startswith("bn"):
      assert moved, path


@pytest.mark.parametrize(("name", "overrides"), REAL_RUNS)
def test_dropout_only_in_train_mode(name, overrides):
  result = _train_step_run(name, overrides)
  np.testing.assert_array_equal(result["eval_logits"], result["other_eval_logits"])
  # Two dropout keys give two different train outputs exactly when the
  # model has dropout (C1/C3, VGG and AlexNet, as in the references).
  same = np.array_equal(result["dropout_logits"], result["other_dropout_logits"])
  assert same == (name not in DROPOUT_MODELS)


@pytest.mark.parametrize("name", NAMES)
def test_dropout_rng_needed_only_by_dropout_models(name):
  model, variables, x = _at_paper_input_size(name)

  def train_without_rngs():
    return jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x
    )

  if name in DROPOUT_MODELS:
    with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
      train_without_rngs()
  else:
    train_without_rngs()


# --------------------------------------------------------------------------
# Initialization and dtype.


def test_initialization_follows_the_pytorch_references():
  params = _batch_stats_after_one_train_forward("f1", 1.0)[0]["params"]
  # nn.Linear's default: kernel and bias uniform in ±1/sqrt(fan_in).
  bound = 1 / math.sqrt(784)
  for leaf in (params["fc1"]["kernel"], params["fc1"]["bias"]):
    assert np.max(np.abs(leaf)) <= bound
    assert np.max(np.abs(leaf)) > 0.95 * bound
  np.testing.assert_allclose(np.std(params["fc1"]["kernel"]), bound / math.sqrt(3), rtol=0.01)
  np.testing.assert_array_equal(params["bn1"]["scale"], 1.0)
  np.testing.assert_array_equal(params["bn1"]["bias"], 0.0)

  # bigBatch resnet.py init_model: conv weights ~ N(0, 2 / (k*k*out_channels)).
  x = _inputs((32, 32, 3))
  model = CifarResNet(10, depth=8)
  init = jax.jit(functools.partial(model.init, train=False), compiler_options=FAST_COMPILE)
  params = init(jax.random.key(0), x)["params"]
  kernel = params["layer3_0"]["conv2"]["kernel"]
  assert kernel.shape == (3, 3, 64, 64)
  np.testing.assert_allclose(np.std(kernel), math.sqrt(2 / (9 * 64)), rtol=0.03)
  assert np.mean(kernel) == pytest.approx(0.0, abs=3e-3)


@pytest.mark.parametrize(
  ("model", "shape"),
  [
    (F1(10, hidden=32, dtype=jnp.bfloat16), (40,)),
    (CifarResNet(10, depth=8, dtype=jnp.bfloat16), (32, 32, 3)),
    (AlexNet(10, dtype=jnp.bfloat16), (224, 224, 3)),
  ],
)
def test_computes_in_dtype_with_float32_params(model, shape):
  variables = _abstract_variables(model, shape)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  x = jax.ShapeDtypeStruct((BATCH, *shape), jnp.float32)
  (logits, state) = jax.eval_shape(
    lambda v, x: model.apply(
      v,
      x,
      train=True,
      mutable=["batch_stats", "intermediates"],
      capture_intermediates=True,
      rngs={"dropout": jax.random.key(0)},
    ),
    variables,
    x,
  )
  activations = flatten_dict(state["intermediates"])
  layer_outputs = {
    path: out[0].dtype
    for path, out in activations.items()
    if len(path) > 1  # leave out the model's own (float32) output
  }
  assert layer_outputs
  assert set(layer_outputs.values()) == {jnp.dtype(jnp.bfloat16)}, layer_outputs
  assert logits.dtype == jnp.float32
