"""The command line of the launchers that take ``--config``: help, misspelled keys, user errors.

``define_config_file`` replaces ``config_flags.DEFINE_config_file`` and
``run(main)`` replaces ``absl.app.run(main)`` in ``experiments.main``,
``experiments.table1`` and ``experiments.sweep``:

* ``--help`` (``-h``, ``--helpshort``) prints the module's docstring, its
  flags and every config key with its value and comment, and exits 0.
* A ``--config.KEY`` that names no key of the config exits with status 2 and
  one line naming the nearest keys (``did you mean regime.lr?``); so do an
  unreadable ``--config`` file and a value the flag cannot parse.
* A user error the library raises on purpose (``ValueError``,
  ``FileNotFoundError``, ``WorkdirLocked``, ``absl.app.UsageError``) prints
  one line, ``error: MESSAGE``, without a traceback, and exits with status 2.
  ``--verbosity=1`` or the environment variable ``BIGBATCH_JAX_TRACEBACK=1``
  shows the traceback instead.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
from collections.abc import Callable

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from bigbatch_jax import configs
from bigbatch_jax.configs.key_docs import describe
from bigbatch_jax.training.workdir_lock import WorkdirLocked

FLAGS = flags.FLAGS
# The --config flag that define_config_file defines belongs to the launcher
# that calls it (absl lists a module's own flags in its help).
flags.disclaim_key_flags()
USAGE_ERROR_EXIT = 2  # as argparse and the shells report a usage error
TRACEBACK_ENV = "BIGBATCH_JAX_TRACEBACK"
USER_ERRORS = (ValueError, FileNotFoundError, WorkdirLocked, app.UsageError)
HELP_FLAGS = ("-h", "-help", "--help", "-helpshort", "--helpshort", "-?")
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")


def fail(message: str) -> None:
  """Prints ``error: MESSAGE`` (one line) on stderr and exits with status 2."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(USAGE_ERROR_EXIT)


def traceback_wanted() -> bool:
  """Whether user errors show their traceback: ``--verbosity=1`` or more, or the variable set."""
  if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
    return True
  return FLAGS.is_parsed() and FLAGS.verbosity >= 1


def _arguments(argv: list[str]) -> list[str]:
  """The flags of ``argv`` (those after a bare ``--`` are positional)."""
  return argv[1 : argv.index("--")] if "--" in argv else argv[1:]


def config_spec(argv: list[str], default: str | None) -> str | None:
  """The ``--config`` value of ``argv`` (``PATH[:ARG]``), else ``default``."""
  args = _arguments(argv)
  for i, arg in enumerate(args):
    if arg.startswith(("--config=", "-config=")):
      return arg.split("=", 1)[1]
    if arg in ("--config", "-config") and i + 1 < len(args):
      return args[i + 1]
  return default


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of a config file ``PATH[:ARG]``, as ``config_flags`` builds it."""
  path, sep, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(
      f"--config={spec}: no such file {path!r}; the configs are "
      f"experiments/configs/{{{','.join(configs.NAMES)}}}.py"
    )
  module_spec = importlib.util.spec_from_file_location("launch_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if sep else module.get_config()


def config_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every dotted key of ``config``, sub-configs included."""
  keys = []
  for key in config:
    keys.append(prefix + key)
    if isinstance(config[key], ml_collections.ConfigDict):
      keys += config_keys(config[key], f"{prefix}{key}.")
  return keys


def nearest_keys(name: str, keys: list[str]) -> list[str]:
  """The keys a misspelled ``name`` most likely meant (at most three, the likeliest first).

  A key scores its likeness to ``name`` as a whole or by its last part
  (``lr`` is ``regime.lr``'s); the best scores, within 0.1 of the best, from 0.6 up.
  """

  def score(key: str) -> float:
    whole = difflib.SequenceMatcher(None, name, key).ratio()
    last = difflib.SequenceMatcher(None, name.rsplit(".", 1)[-1], key.rsplit(".", 1)[-1]).ratio()
    return max(whole, last)

  scored = sorted(((score(k), k) for k in keys), key=lambda sk: -sk[0])
  best = scored[0][0] if scored else 0.0
  return [k for s, k in scored[:3] if s >= max(0.6, best - 0.1)]


def check_override_keys(argv: list[str], config: ml_collections.ConfigDict) -> None:
  """Fails (status 2, one line) at the first ``--config.KEY`` that is no key of ``config``."""
  keys = config_keys(config)
  for arg in _arguments(argv):
    match = _OVERRIDE.match(arg)
    if match and match.group(1) not in keys:
      name = match.group(1)
      near = nearest_keys(name, keys)
      hint = f"did you mean {' or '.join(near)}?" if near else "--help lists the keys"
      fail(f"--config.{name}: no config key {name!r}; {hint}")


def print_help(config: ml_collections.ConfigDict | None, spec: str | None) -> None:
  """The module's docstring and flags, then the config's keys with their comments."""
  main_module = sys.modules["__main__"]
  print((main_module.__doc__ or "").strip() + "\n")
  print("flags:")
  print(FLAGS.main_module_help().rstrip())
  if config is not None:
    print(f"\nconfig keys (--config.KEY=VALUE), with their values in {spec}:\n")
    print(describe(config))
  print(
    f"\nA bad flag, config key or config value prints one line and exits with status "
    f"{USAGE_ERROR_EXIT}; --verbosity=1 or {TRACEBACK_ENV}=1 shows the traceback."
  )


def _wants_help(argv: list[str]) -> bool:
  return any(arg in HELP_FLAGS for arg in _arguments(argv))


def check_config_argv(
  argv: list[str], default_config: str | None
) -> ml_collections.ConfigDict | None:
  """Loads ``--config`` (or the default file) and checks the override keys; fails in one line."""
  spec = config_spec(argv, default_config)
  try:
    config = load_config(spec) if spec else None
  except (ValueError, OSError) as error:
    if _wants_help(argv):
      return None  # the help is printed all the same
    fail(str(error))
  if config is not None:
    check_override_keys(argv, config)
  elif not _wants_help(argv) and any(_OVERRIDE.match(a) for a in _arguments(argv)):
    fail("--config.KEY overrides need the config file: --config=experiments/configs/f1.py:sb")
  return config


def _parse_error(error: Exception) -> None:
  """A flag or override that cannot be parsed: one line, status 2 (or the traceback)."""
  if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
    raise error
  fail(" ".join(str(error).split()))


_PARSE_ERRORS = (flags.Error, ValueError, AttributeError, KeyError, OSError)


def define_config_file(default: str | None, help_string: str) -> None:
  """``config_flags.DEFINE_config_file("config", ...)`` (locked) with one-line errors.

  With a default file and no ``--config`` on the command line, config_flags
  applies the ``--config.KEY`` overrides while it defines the flag, so their
  keys are checked here first.
  """
  if default is not None and config_spec(sys.argv, None) is None:
    check_config_argv(sys.argv, default)
  try:
    config_flags.DEFINE_config_file("config", default, help_string, lock_config=True)
  except _PARSE_ERRORS as error:
    _parse_error(error)


def _parse_flags(default_config: str | None) -> Callable[[list[str]], list[str]]:
  """absl's flag parser, with help and key errors as the module docstring says."""

  def parse(argv: list[str]) -> list[str]:
    config = check_config_argv(argv, default_config)
    if _wants_help(argv):
      spec = config_spec(argv, default_config)
      if spec is None:  # no --config and no default file: the default config's keys
        config, spec = configs.get("default"), "bigbatch_jax/configs/default.py"
      print_help(config, spec)
      sys.exit(0)
    try:
      return FLAGS(argv)
    except _PARSE_ERRORS as error:
      _parse_error(error)

  return parse


def run(main: Callable[[list[str]], None], default_config: str | None = None) -> None:
  """``absl.app.run(main)`` with the help and the one-line errors of the module docstring.

  Args:
    main: the launcher's main function.
    default_config: the ``--config`` flag's default file, if it has one (its
      keys are checked and listed when ``--config`` is not given).
  """

  def guarded(argv: list[str]) -> None:
    try:
      main(argv)
    except USER_ERRORS as error:
      if traceback_wanted():
        raise
      fail(" ".join(str(error).split()))

  app.run(guarded, flags_parser=_parse_flags(default_config))
