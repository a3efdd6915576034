"""The notebooks run top to bottom (their quick form, BIGBATCH_QUICK=1)."""

import json
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")


@pytest.fixture
def kernel_for_this_interpreter(tmp_path, monkeypatch):
  """A kernel spec that runs this Python, whatever 'python' is on PATH (CI, venvs)."""
  spec_dir = tmp_path / "kernels" / "bigbatch-test"
  spec_dir.mkdir(parents=True)
  spec = {
    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "bigbatch_jax test",
    "language": "python",
  }
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
  monkeypatch.setenv("BIGBATCH_QUICK", "1")
  # The kernel imports this checkout's package, never a copy installed earlier.
  monkeypatch.setenv("PYTHONPATH", REPO)
  # The kernel is a fresh process: one CPU device, not the test session's four.
  monkeypatch.setenv("XLA_FLAGS", "")
  return "bigbatch-test"


def _execute(name, kernel):
  """The notebook's code cells' outputs after running it; no cell may fail."""
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  assert "pip" in "".join(nb.cells[1].source), "the first code cell installs the package"
  client = NotebookClient(
    nb,
    kernel_name=kernel,
    timeout=300,
    resources={"metadata": {"path": NOTEBOOKS}},
  )
  client.execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  return outputs


@pytest.mark.parametrize("name", ["quickstart.ipynb", "nnx_quickstart.ipynb"])
def test_notebook_executes(name, kernel_for_this_interpreter):
  outputs = _execute(name, kernel_for_this_interpreter)
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  for variant in ("SB", "LB", "LB+LR+GBN+RA"):
    assert f"{variant} " in text and "test accuracy" in text
  assert any("image/png" in o.get("data", {}) for o in outputs), "the curves are plotted inline"
  if name == "nnx_quickstart.ipynb":
    assert "eval outputs unchanged by ghostify: True" in text
    assert text.count("GhostBatchNorm") >= 2, "ghostify replaced the model's nnx.BatchNorm layers"


@pytest.mark.parametrize("name", ["quickstart.ipynb", "nnx_quickstart.ipynb"])
def test_the_install_cell_installs_from_the_clone_or_a_wheel_beside_it(name, tmp_path, monkeypatch):
  import importlib.util
  import subprocess

  source = "".join(nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4).cells[1].source)
  assert "http" not in source and "git+" not in source, "no public address exists"
  installs = []
  monkeypatch.setattr(subprocess, "check_call", installs.append)
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # not installed
  monkeypatch.delenv("BIGBATCH_JAX_SOURCE", raising=False)
  monkeypatch.chdir(NOTEBOOKS)  # notebooks/ of this clone
  exec(source, {})
  assert installs[-1][-4:] == ["pip", "install", "-q", REPO]
  alone = tmp_path / "colab"
  alone.mkdir()
  monkeypatch.chdir(alone)  # outside a clone, nothing beside it
  with pytest.raises(RuntimeError, match=r"neither a clone .* nor a wheel"):
    exec(source, {})
  (alone / "bigbatch_jax-0.3.0-py3-none-any.whl").write_bytes(b"")
  exec(source, {})
  assert installs[-1][-1] == str(alone / "bigbatch_jax-0.3.0-py3-none-any.whl")
  monkeypatch.setenv("BIGBATCH_JAX_SOURCE", "/somewhere/else")
  exec(source, {})
  assert installs[-1][-1] == "/somewhere/else"
