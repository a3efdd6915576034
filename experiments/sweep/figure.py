"""The generalization-gap figure, drawn from ``sweep.json`` alone.

Test accuracy against batch size (log axis) for plain LB and the remedy,
with B_simple (McCandlish et al. 2018) measured early in the small-batch run
as a vertical line on the same axis: the gap should open near it if the
noise scale predicts where larger batches stop behaving like small ones.
"""

from __future__ import annotations

import math
import os

from bigbatch_jax.training.plotting import pyplot
from experiments.sweep.aggregate import JSON_FILE
from experiments.table1.runner import read_json

PNG_FILE = "sweep.png"


def draw(json_path: str, png_path: str | None = None) -> str:
  """Draws the figure of a ``sweep.json`` into ``png_path`` (default: beside it)."""
  summary = read_json(json_path)
  png_path = png_path or os.path.join(os.path.dirname(json_path), PNG_FILE)
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for marker, (variant, points) in zip("os^", summary["curves"].items(), strict=False):
    done = [p for p in points if p["test_accuracy"] is not None]
    ax.errorbar(
      [p["batch_size"] for p in done],
      [p["test_accuracy"] for p in done],
      yerr=[p["std"] or 0.0 for p in done],
      marker=marker,
      capsize=3,
      label=variant if variant == "lb" else f"{variant} (remedy)",
    )
  noise = summary.get("noise_scale")
  b_simple = noise and noise.get("b_simple")
  if b_simple is not None and math.isfinite(b_simple) and b_simple > 0:
    label = f"B_simple = {b_simple:.0f} (epoch {noise['epoch']:g})"
    ax.axvline(b_simple, color="k", ls="--", label=label)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("batch size")
  ax.set_ylabel("test accuracy (%)")
  setup = summary.get("setup", {})
  title = f"{setup.get('model', '')} on {setup.get('dataset', '')}"
  ax.set_title(f"{title}, {setup.get('epochs', '?')} epochs, equal for every batch size")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(png_path, dpi=80)
  plt.close(fig)
  return png_path


def draw_in(workdir: str) -> str:
  return draw(os.path.join(workdir, JSON_FILE))
