"""The one matplotlib set-up of every figure the package and its drivers draw.

Figures are written to files only (run figures, the table's, the sweep's and
the diagnostics'), so pyplot runs on the file-only Agg backend, which needs no
display; matplotlib is imported when a figure is drawn, not when a driver is.
"""

from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
  """``matplotlib.pyplot`` on the Agg backend (files only, no display needed)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt
