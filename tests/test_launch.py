"""The launchers' command line: misspelled keys, one-line user errors, --help (real processes).

Every launch here stops before training (a flag error, a refused workdir,
the help), so each costs the interpreter's start and the imports.
"""

import os
import re
import subprocess
import sys

import pytest

from bigbatch_jax import configs
from bigbatch_jax.configs import key_docs
from experiments import launch
from tests.test_training import REPO

F1 = "--config=experiments/configs/f1.py:sb"


def _launch(module, *flags, env=None):
  environment = {k: v for k, v in os.environ.items() if k != launch.TRACEBACK_ENV}
  environment.update({"JAX_PLATFORMS": "cpu", **(env or {})})
  command = [sys.executable, "-m", module, *flags]
  return subprocess.run(
    command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=120
  )


MISSPELLED = "error: --config.lr: no config key 'lr'; did you mean regime.lr?\n"
# About 6 s each on two shared CPU cores (the interpreter and the imports):
# experiments.main by default, the drivers (whose config flag has a default
# file, read as the flag is defined) with -m slow.
LAUNCHERS = [
  ("experiments.main", (F1, "--workdir=unused")),
  pytest.param("experiments.table1", ("--workdir=unused",), marks=pytest.mark.slow),
  pytest.param("experiments.sweep", ("--workdir=unused",), marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("module", "flags"), LAUNCHERS)
def test_a_misspelled_config_key_exits_2_naming_the_nearest_key(module, flags):
  result = _launch(module, *flags, "--config.lr=0.5")
  assert result.returncode == 2, result.stderr
  assert result.stderr == MISSPELLED


@pytest.mark.parametrize(
  "default", [None, "experiments/configs/f1.py", "experiments/configs/default.py"]
)
def test_the_override_keys_are_checked_against_the_config_file(default, capsys):
  argv = ["prog", "--config.lr=0.5"] if default else ["prog", F1, "--config.lr=0.5"]
  with pytest.raises(SystemExit) as exited:
    launch.check_config_argv(argv, default and os.path.join(REPO, default))
  assert exited.value.code == 2 and capsys.readouterr().err == MISSPELLED
  good = launch.check_config_argv(
    [*argv[:-1], "--config.regime.lr=0.5", "--noconfig.eval_on_train"],
    default and os.path.join(REPO, default),
  )
  assert good.regime.lr == 0.1  # the file's config; absl applies the overrides


def test_the_nearest_keys_of_typical_misspellings():
  keys = launch.config_keys(configs.get("f1", "sb"))
  assert launch.nearest_keys("lr", keys) == ["regime.lr"]
  assert launch.nearest_keys("regime.lrr", keys) == ["regime.lr"]
  assert launch.nearest_keys("batch_szie", keys) == ["batch_size"]
  assert launch.nearest_keys("model_options.hiden", keys) == ["model_options.hidden"]
  assert launch.nearest_keys("xyz", keys) == []


def _refused_workdir(tmp_path):
  """A workdir whose record holds regime.lr 0.1: launching lr 0.5 on it is refused."""
  config = configs.get("f1", "sb")
  config.dataset = "synthetic"
  (tmp_path / "config.json").write_text(config.to_json())
  return (F1, "--config.dataset=synthetic", "--config.regime.lr=0.5", f"--workdir={tmp_path}")


def test_a_user_error_is_one_line_without_traceback_exit_2(tmp_path):
  result = _launch("experiments.main", *_refused_workdir(tmp_path))
  assert result.returncode == 2, result.stderr
  assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
  assert result.stderr.startswith("error: workdir ")
  assert "(regime.lr: 0.1 -> 0.5)" in result.stderr


@pytest.mark.parametrize("how", ["environment", pytest.param("verbosity", marks=pytest.mark.slow)])
def test_the_traceback_on_request(how, tmp_path):
  flags = _refused_workdir(tmp_path)
  if how == "verbosity":
    result = _launch("experiments.main", *flags, "--verbosity=1")
  else:
    result = _launch("experiments.main", *flags, env={launch.TRACEBACK_ENV: "1"})
  assert result.returncode == 1
  assert "Traceback (most recent call last)" in result.stderr
  assert "ValueError: workdir " in result.stderr


@pytest.mark.parametrize(
  "module", ["experiments.main", pytest.param("experiments.table1", marks=pytest.mark.slow)]
)
def test_help_exits_0_listing_every_config_key_with_its_comment(module):
  result = _launch(module, "--help")
  assert result.returncode == 0, result.stderr
  text = result.stdout
  comments = key_docs.key_comments()
  for key in key_docs.leaves(configs.get("default")):
    # Every key, or the keys of a sub-config the row fills (model_options.hidden).
    assert re.search(rf"^{re.escape(key)}( = |\.)", text, re.MULTILINE), key
  assert "regime.lr = 0.1: initial learning rate at base_batch_size" in text
  assert all(comments[k] for k in key_docs.leaves(configs.get("default"))), "a key lacks a comment"
  # The examples the help gives name files that exist.
  paths = set(re.findall(r"[\w./-]*configs/\w+\.py", text))
  assert paths and all(os.path.isfile(os.path.join(REPO, p)) for p in paths), paths
