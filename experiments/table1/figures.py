"""The table's figures, drawn from ``table1.json``'s numbers only (no run is read).

  python -c "from experiments.table1 import figures; figures.plot_all('runs/table1')"

redraws them from a finished table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from bigbatch_jax.training.plotting import pyplot
from experiments.table1.report import read_table

FIGURES = (
  "table1_error_epochs.png",
  "table1_error_updates.png",
  "table1_weight_distance.png",
  "table1_gap.png",
)


def _label(r: dict) -> str:
  return f"{r['variant']} ({r['label']})" if r["label"] != r["variant"] else r["variant"]


def _save(fig, workdir: str, name: str) -> str:
  fig.tight_layout()
  path = os.path.join(workdir, name)
  fig.savefig(path, dpi=80)
  pyplot().close(fig)
  return path


def plot_error(rows: Sequence[dict], key: str, xlabel: str, workdir: str, name: str) -> str:
  """Test error (mean over seeds) against ``key``'s x axis, log scale."""
  plt = pyplot()
  colors = plt.get_cmap("tab20")
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for i, r in enumerate(rows):
    xs, ys = r["curves"][key]
    if xs:
      ax.plot(xs, 100 * np.asarray(ys), color=colors(i % 20), label=_label(r))
  ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel("test error (%), mean over seeds")
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=6)
  return _save(fig, workdir, name)


def plot_weight_distance(rows: Sequence[dict], workdir: str, name: str) -> str:
  """||w - w0|| against log(updates), with each row's log fit (Hoffer Figure 2)."""
  plt = pyplot()
  colors = plt.get_cmap("tab20")
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for i, r in enumerate(rows):
    steps, dist = r["curves"]["distance"]
    if len(steps) < 2:
      continue
    ax.plot(steps, dist, color=colors(i % 20), label=_label(r))
    if r["weight_distance_slope"] is not None:
      first = np.asarray(r["curves"]["initial_distance"][0])
      fit = r["weight_distance_slope"] * np.log(first) + r["weight_distance_intercept"]
      ax.plot(first, fit, "--", color=colors(i % 20), linewidth=0.8)
  ax.set_xscale("log")
  ax.set_xlabel("updates t (log scale)")
  ax.set_ylabel("||w_t - w_0||, mean over seeds")
  ax.set_title("||w - w0||; dashed: log fit over the initial lr phase (Hoffer Fig. 2)", fontsize=9)
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=6, ncol=2)
  return _save(fig, workdir, name)


def plot_gap(rows: Sequence[dict], workdir: str, name: str) -> str:
  """Accuracy minus SB's per row (± seed std), with the paper's gap beside where known."""
  plt = pyplot()
  colors = plt.get_cmap("tab20")
  sb = next((r for r in rows if r["variant"] == "sb" and r["test_accuracy_mean"] is not None), None)
  ref, ref_name = (sb["test_accuracy_mean"], "SB") if sb else (0.0, "0")
  paper_ref = sb.get("paper_accuracy") if sb else None
  measured = [r for r in rows if r["test_accuracy_mean"] is not None]
  paper = [
    r.get("paper_accuracy") - paper_ref
    if paper_ref is not None and r.get("paper_accuracy") is not None
    else None
    for r in measured
  ]
  width = 0.4 if any(g is not None for g in paper) else 0.7
  x = np.arange(len(measured))
  fig, ax = plt.subplots(figsize=(7.2, 3.8))
  ax.bar(
    x, [r["test_accuracy_mean"] - ref for r in measured], width,
    yerr=[r["test_accuracy_std"] for r in measured], capsize=3,
    color=[colors(rows.index(r) % 20) for r in measured], label="measured (± seed std)",
  )  # fmt: skip
  if width == 0.4:
    ax.bar(x + width, [g or 0.0 for g in paper], width, color="lightgray", edgecolor="gray",
           label="Hoffer Table 1")  # fmt: skip
    ax.legend(fontsize=7)
  ax.axhline(0.0, color="black", linewidth=0.8)
  ticks = x + (width / 2 if width == 0.4 else 0)
  ax.set_xticks(ticks, [r["label"] for r in measured], fontsize=7, rotation=30, ha="right")
  ax.set_ylabel(f"test accuracy - {ref_name} (points)")
  ax.set_title("Generalization gap to the small batch", fontsize=10)
  ax.grid(alpha=0.3, axis="y")
  return _save(fig, workdir, name)


def plot_all(workdir: str) -> list[str]:
  """Draws the four ``FIGURES`` from ``workdir/table1.json``; returns their paths."""
  rows = read_table(workdir)["rows"]
  return [
    plot_error(rows, "error_epoch", "epochs (log scale)", workdir, FIGURES[0]),
    plot_error(rows, "error_step", "updates (log scale)", workdir, FIGURES[1]),
    plot_weight_distance(rows, workdir, FIGURES[2]),
    plot_gap(rows, workdir, FIGURES[3]),
  ]
