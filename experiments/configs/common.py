"""What the paper-row configs share, kept here for code that imports it from this path.

It lives in ``bigbatch_jax.configs.common``: the row argument, the row's
settings, the smoke-run shrink, Table 1's columns and ``override``.
"""

from bigbatch_jax.configs.common import (
  TABLE1_COLUMNS,
  cifar_row,
  override,
  paper_row,
  parse_arg,
  shrink_to_quick,
  table1_accuracy,
)

__all__ = [
  "TABLE1_COLUMNS",
  "cifar_row",
  "override",
  "paper_row",
  "parse_arg",
  "shrink_to_quick",
  "table1_accuracy",
]
