"""The private flax/jax names bigbatch_jax uses exist, with the arguments it passes."""

import ast
import importlib
import inspect
import pathlib

import flax
import jax
import pytest

from bigbatch_jax import _compat

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("module", "name", "kwargs"), _compat.PRIVATE_NAMES)
def test_private_names_exist_with_the_arguments_we_pass(module, name, kwargs):
  versions = f"flax {flax.__version__}, jax {jax.__version__}"
  try:
    obj = getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError) as e:
    pytest.fail(
      f"{module}.{name} is gone in {versions} ({e}); bigbatch_jax/_compat.py needs a "
      "replacement for it"
    )
  if kwargs:
    params = inspect.signature(obj).parameters
    missing = [k for k in kwargs if k not in params]
    assert not missing, (
      f"{module}.{name} no longer takes {missing} in {versions} (it takes {list(params)}); "
      "update bigbatch_jax/_compat.py and its callers"
    )


def test_compat_wrappers_run():
  assert isinstance(_compat.backends_are_initialized(), bool)
  mean, var = _compat.compute_stats(jax.numpy.arange(4.0).reshape(2, 2), (0,), dtype=None)
  assert mean.tolist() == [1.0, 2.0] and var.tolist() == [1.0, 1.0]


def _private_imports(path: pathlib.Path) -> list[str]:
  """``module.name`` of every import of a private flax/jax name in ``path``."""
  found = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      root = node.module.split(".")[0]
      if root not in ("jax", "flax", "jaxlib"):
        continue
      names = [a.name for a in node.names]
      if "._" in f".{node.module}" or any(n.startswith("_") for n in names):
        found.append(f"{node.module}: {names}")
    elif isinstance(node, ast.Import):
      found += [a.name for a in node.names if "._" in a.name and a.name.split(".")[0] == "jax"]
  return found


def test_private_flax_and_jax_names_are_imported_only_by_the_compat_module():
  offenders = {
    str(path.relative_to(REPO)): found
    for folder in ("bigbatch_jax", "experiments")
    for path in sorted((REPO / folder).rglob("*.py"))
    if path.name != "_compat.py" and (found := _private_imports(path))
  }
  assert not offenders, f"import these through bigbatch_jax/_compat.py instead: {offenders}"
