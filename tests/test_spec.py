"""The resolved run spec: the config is read once, and nothing below ``resolve`` reads it."""

from __future__ import annotations

import ast
import dataclasses
import pathlib

import pytest

from bigbatch_jax import configs
from bigbatch_jax.training import spec as spec_lib

PACKAGE = pathlib.Path(spec_lib.__file__).resolve().parents[1]

# The modules that read a ConfigDict: the configs, ``resolve`` and what it
# derives the plan, the protocol and the population with, and the entry points
# that call it (the loop, a saved run's rebuild, the workdir's saved config).
CONFIG_READERS = frozenset(
  {
    "configs",
    "protocol.py",
    "training/spec.py",
    "training/plan.py",
    "training/plan_sizes.py",
    "training/population_spec.py",
    "training/loop.py",
    "training/workdir.py",
    "diagnostics/runs.py",
  }
)


def _reads_a_config(source: str) -> list[str]:
  """Where ``source`` imports ml_collections or reads a name ``config`` (attribute or item)."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import | ast.ImportFrom):
      names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
      if any(n.split(".")[0] == "ml_collections" for n in names):
        found.append(f"line {node.lineno}: imports ml_collections")
    if isinstance(node, ast.Attribute | ast.Subscript):
      target = node.value
      if isinstance(target, ast.Name) and target.id == "config":
        found.append(f"line {node.lineno}: reads config")
  return found


def _library_modules():
  for path in sorted(PACKAGE.rglob("*.py")):
    relative = path.relative_to(PACKAGE).as_posix()
    if relative.split("/")[0] in CONFIG_READERS or relative in CONFIG_READERS:
      continue
    yield relative, path.read_text()


def test_no_module_below_resolve_reads_a_config():
  readers = {
    name: where for name, source in _library_modules() if (where := _reads_a_config(source))
  }
  assert readers == {}, f"modules below resolve that read a ConfigDict: {readers}"


def test_the_scan_finds_a_config_read_and_an_import():
  assert _reads_a_config("def f(config):\n  return config.seed\n") == ["line 2: reads config"]
  assert _reads_a_config("def f(config):\n  return config['seed']\n") == ["line 2: reads config"]
  assert _reads_a_config("import ml_collections\n") == ["line 1: imports ml_collections"]
  assert _reads_a_config("from ml_collections import ConfigDict\n") == [
    "line 1: imports ml_collections"
  ]
  # Error messages that name a key are not reads.
  assert _reads_a_config("raise ValueError('config.seed must be >= 0')\n") == []


def test_the_scan_covers_the_modules_that_take_the_spec_parts():
  scanned = dict(_library_modules())
  for name in ("data/run_data.py", "training/setup.py", "training/events.py"):
    assert name in scanned


def test_resolve_gives_frozen_typed_parts_of_the_config():
  config = configs.get("f1", "lb+lr+gbn,quick")
  spec = spec_lib.resolve(config, num_train=4000, num_devices=1)
  assert spec.data.dataset == "mnist1d" and spec.data.augment == "none"
  assert spec.model.model == "f1" and spec.model.bn_momentum == config.bn_momentum
  assert spec.plan.ghost_batch_size == config.base_batch_size
  assert spec.events.steps_per_call == config.steps_per_call
  assert spec.settings.seed == 0 and spec.population is None
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.settings.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize(
  ("key", "value", "message"),
  [
    ("log_every_steps", 0, r"config.log_every_steps=0; valid: an integer >= 1"),
    ("ghost_variance", "exact", r"config.ghost_variance='exact'; valid: \('shifted'"),
    ("eval_every_epochs", -1.0, r"config.eval_every_epochs=-1.0; valid: a number of epochs > 0"),
    ("compute_dtype", "float16", r"config.compute_dtype='float16'; valid: \('float32'"),
    ("noise_alpha", -1.0, r"config.noise_alpha=-1.0; valid: a number >= 0"),
    ("distributed_timeout_s", 0, r"config.distributed_timeout_s=0; valid: seconds > 0"),
    ("mnist1d_num_samples", 0, r"config.mnist1d_num_samples=0; valid: an integer >= 1"),
  ],
)
def test_resolve_names_the_key_the_value_and_what_is_valid(key, value, message):
  config = configs.get("f1", "sb,quick")
  config[key] = value
  with pytest.raises(ValueError, match=message):
    spec_lib.resolve(config, num_train=4000, num_devices=1)


def test_the_eval_batch_must_split_over_the_devices():
  config = configs.get("f1", "sb,quick")
  config.eval_batch_size = 999
  with pytest.raises(ValueError, match="eval_batch_size=999 is not divisible by 2 devices"):
    spec_lib.resolve(config, num_train=4000, num_devices=2)
