"""The ```python blocks of README.md and docs/*.md, each run as a script of its own.

Every block fenced exactly as ```python is an example that must run unchanged,
alone, in a fresh interpreter (its own imports, small sizes). A block that is
not meant to run is fenced with another info string (```text, ```bash).

Run as a script, it executes the blocks of the files it is given with this
interpreter: CI uses it to run the README's examples against the installed
wheel, outside the clone (``python tests/doc_examples.py README.md``).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def example_files() -> list[pathlib.Path]:
  """README.md and every Markdown page of docs/ (the API pages hold no examples)."""
  return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: pathlib.Path) -> list[tuple[int, str]]:
  """(line number, source) of each ```python block of ``path``."""
  text = path.read_text()
  return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in EXAMPLE_FENCE.finditer(text)]


def run_block(source: str, cwd: str, timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs ``source`` as a script in a fresh interpreter in ``cwd``."""
  script = pathlib.Path(cwd) / "example.py"
  script.write_text(source)
  env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
  return subprocess.run(
    [sys.executable, str(script)],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def main(paths: list[str]) -> int:
  failed = 0
  for name in paths:
    path = pathlib.Path(name).resolve()
    for line, source in python_blocks(path):
      with tempfile.TemporaryDirectory() as cwd:
        result = run_block(source, cwd)
      status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
      print(
        f"{path.name}:{line}: {status}\n{result.stdout}{result.stderr if result.returncode else ''}"
      )
      failed += result.returncode != 0
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
