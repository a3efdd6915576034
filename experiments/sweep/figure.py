"""The generalization-gap figure, drawn from ``sweep.json`` alone.

Test accuracy against batch size (log axis) for plain LB, the remedy and
the tuned sqrt rule, with B_simple (McCandlish et al. 2018) measured along
the small-batch run on the same axis: one dotted vertical line per measured
epoch, labelled with it, and the span between the smallest and the largest
shaded. Where the gaps open can then be read against where the noise scale
lay during training.
"""

from __future__ import annotations

import math
import os

from bigbatch_jax.training.plotting import pyplot
from experiments.sweep.aggregate import JSON_FILE
from experiments.sweep.grid import PLAIN, TUNED
from experiments.table1.runner import read_json

PNG_FILE = "sweep.png"


def _draw_noise(ax, along) -> None:
  """B_simple per measured epoch; a non-positive estimate (a noisy |G|^2 < 0) is left out."""
  shown = [r for r in along if math.isfinite(r["b_simple"]) and r["b_simple"] > 0]
  if not shown:
    return
  values = [r["b_simple"] for r in shown]
  epochs = f"{shown[0]['epoch']:g}-{shown[-1]['epoch']:g}"
  label = f"B_simple {min(values):.0f}-{max(values):.0f} (epochs {epochs})"
  ax.axvspan(min(values), max(values), color="k", alpha=0.08, label=label)
  for r in shown:
    ax.axvline(r["b_simple"], color="k", ls=":", lw=1)
    ax.annotate(
      f"ep {r['epoch']:g}", (r["b_simple"], 0.02), xycoords=("data", "axes fraction"),
      rotation=90, fontsize=7, ha="right",
    )  # fmt: skip


def _label(variant: str) -> str:
  if variant == PLAIN:
    return variant
  if variant == TUNED:
    return f"{variant} (lr selected on validation)"
  return f"{variant} (remedy)"


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
      label=_label(variant),
    )
  _draw_noise(ax, (summary.get("noise_scale") or {}).get("along", []))
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
