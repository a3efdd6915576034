"""The size rules of the library and its experiments: no module over 450 lines, no function
over 80 (docstrings aside).

Measured as ``wc -l`` counts lines, and a function from its ``def`` line to
its last, less its docstring; a module that outgrows them is split by job.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def _library_modules() -> list[pathlib.Path]:
  return sorted([*(ROOT / "bigbatch_jax").rglob("*.py"), *(ROOT / "experiments").rglob("*.py")])


def _function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
  """Lines from ``def`` to the function's last line, less its docstring's."""
  lines = node.end_lineno - node.lineno + 1
  first = node.body[0]
  value = first.value if isinstance(first, ast.Expr) else None
  if isinstance(value, ast.Constant) and isinstance(value.value, str):
    lines -= first.end_lineno - first.lineno + 1
  return lines


def test_no_library_module_is_over_the_line_limit():
  long = {
    str(path.relative_to(ROOT)): count
    for path in _library_modules()
    if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES
  }
  assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by job): {long}"


def test_no_library_function_is_over_the_line_limit():
  long = {}
  for path in _library_modules():
    for node in ast.walk(ast.parse(path.read_text())):
      if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        continue
      if (count := _function_lines(node)) > MAX_FUNCTION_LINES:
        long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = count
  assert not long, f"functions over {MAX_FUNCTION_LINES} lines, docstrings aside: {long}"
