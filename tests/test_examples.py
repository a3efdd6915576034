"""Every example of README.md and docs/*.md runs unchanged, alone, in a fresh interpreter."""

import pytest

from tests import doc_examples

EXAMPLES = [
  pytest.param(source, id=f"{path.name}:{line}")
  for path in doc_examples.example_files()
  for line, source in doc_examples.python_blocks(path)
]


@pytest.mark.parametrize("source", EXAMPLES)
def test_example_runs(source, tmp_path):
  result = doc_examples.run_block(source, str(tmp_path))
  assert result.returncode == 0, f"the example failed:\n{source}\n{result.stdout}\n{result.stderr}"


def test_the_readme_is_short_and_has_its_three_examples():
  readme = doc_examples.ROOT / "README.md"
  assert len(readme.read_text().splitlines()) <= 250
  sources = [source for _, source in doc_examples.python_blocks(readme)]
  assert len(sources) == 3
  assert "optax.chain" in sources[0] and "jax.jit" in sources[0]
  assert "bb.GhostBatchNorm" in sources[1] and "nn.Module" in sources[1]
  assert "ghostify" in sources[2] and "nnx.Optimizer" in sources[2]


def test_blocks_are_found_with_their_line_and_other_fences_are_not_run(tmp_path):
  page = tmp_path / "page.md"
  page.write_text(
    "# t\n\n```python\nprint(1)\n```\n\n```text\nnot run\n```\n```python\nx = 2\n```\n"
  )
  assert doc_examples.python_blocks(page) == [(3, "print(1)\n"), (10, "x = 2\n")]
  failing = doc_examples.run_block("raise SystemExit(3)", str(tmp_path))
  assert failing.returncode == 3
