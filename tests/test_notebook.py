"""The quickstart notebook runs top to bottom (its quick form, BIGBATCH_QUICK=1)."""

import json
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")


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
  # The kernel is a fresh process: one CPU device, not the test session's four.
  monkeypatch.setenv("XLA_FLAGS", "")
  return "bigbatch-test"


def test_quickstart_notebook_executes(kernel_for_this_interpreter):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert "pip" in "".join(nb.cells[1].source), "the first code cell installs the package"
  client = NotebookClient(
    nb,
    kernel_name=kernel_for_this_interpreter,
    timeout=300,
    resources={"metadata": {"path": os.path.join(REPO, "notebooks")}},
  )
  client.execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  for name in ("SB", "LB", "LB+LR+GBN+RA"):
    assert f"{name} " in text and "test accuracy" in text
  assert any("image/png" in o.get("data", {}) for o in outputs), "the curves are plotted inline"
