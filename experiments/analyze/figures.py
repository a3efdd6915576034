"""The diagnostics' figures, drawn from ``analysis.json``'s numbers only (``compute``)."""

from __future__ import annotations

import os

import numpy as np

from bigbatch_jax.training.plotting import pyplot


def _save(fig, workdir: str, name: str) -> str:
  path = os.path.join(workdir, f"analysis_{name}.png")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  pyplot().close(fig)
  return path


def plot_sharpness(result: dict, workdir: str) -> str:
  """Bars of each run's top Hessian eigenvalue and epsilon-sharpness."""
  runs = result["runs"]
  fig, axes = pyplot().subplots(1, 2, figsize=(8, 3.2))
  positions = np.arange(len(runs))
  axes[0].bar(positions, [r["top_eigenvalues"][0] for r in runs], color="tab:blue")
  axes[0].set_ylabel("top Hessian eigenvalue")
  axes[1].bar(positions, [r["epsilon_sharpness"] for r in runs], color="tab:orange")
  axes[1].set_ylabel(f"epsilon-sharpness (%), eps={result['epsilon']:g}")
  for ax in axes:
    ax.set_xticks(positions, [r["label"] for r in runs], rotation=30, ha="right", fontsize=7)
    ax.grid(alpha=0.3, axis="y")
  fig.suptitle("Sharpness of the final minimum (Keskar et al. 2017)", fontsize=9)
  return _save(fig, workdir, "sharpness")


def plot_interpolation(result: dict, workdir: str) -> str:
  """Loss (log) and accuracy along the line from theta_S to theta_L."""
  curve = result["curve"]
  fig, ax = pyplot().subplots(figsize=(6, 4))
  ax2 = ax.twinx()
  for split, style in (("train", "--"), ("test", "-")):
    ax.semilogy(curve["alpha"], curve[f"{split}_loss"], "b" + style, label=f"{split} loss")
    accuracy = 100 * np.asarray(curve[f"{split}_accuracy"])
    ax2.plot(curve["alpha"], accuracy, "r" + style, label=f"{split} accuracy")
  ax.set_xlabel(
    f"a   (0: {result['small_batch_label']},  1: {result['large_batch_label']})", fontsize=8
  )
  ax.set_ylabel("cross-entropy", color="b")
  ax2.set_ylabel("accuracy (%)", color="r")
  for a in (0.0, 1.0):
    ax.axvline(a, color="gray", lw=0.5)
  handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
  ax.legend(
    handles, [h.get_label() for h in handles], fontsize=7, ncol=4, loc="upper center",
    bbox_to_anchor=(0.5, -0.2),
  )  # fmt: skip
  ax.set_title("(1 - a) theta_S + a theta_L (Keskar Fig. 3, Jaiswal Fig. 2)", fontsize=9)
  return _save(fig, workdir, "interpolation")


def plot_landscape(result: dict, workdir: str) -> str:
  """Loss changes against ||w - w0||, and their binned spread with the power-law fit."""
  fig, axes = pyplot().subplots(1, 2, figsize=(8, 3.2))
  distances = np.asarray(result["distances"], dtype=float)
  changes = np.asarray(result["loss_changes"], dtype=float)
  axes[0].scatter(distances, changes, s=2, alpha=0.4)
  axes[0].set_xlabel("||w - w0||")
  axes[0].set_ylabel("L(w) - L(w0)")
  centers = np.asarray(result["centers"], dtype=float)
  spread = np.asarray([np.nan if s is None else s for s in result["std"]], dtype=float)
  valid = np.isfinite(spread)
  axes[1].plot(centers[valid], spread[valid], "o", ms=3, label="binned std")
  d = centers[valid][1:]
  axes[1].plot(
    d,
    np.exp(result["intercept"]) * d ** result["slope"],
    "--",
    label=f"fit: alpha = {result['alpha']:.2f} (R²={result['r2']:.3f})",
  )
  axes[1].set_xscale("log")
  axes[1].set_yscale("log")
  axes[1].set_xlabel("||w - w0||")
  axes[1].set_ylabel("sqrt(E (L(w) - L(w0))²)")
  axes[1].legend(fontsize=7)
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.suptitle(f"Random directions at w0 of {result['label']} (Hoffer appendix B)", fontsize=9)
  return _save(fig, workdir, "landscape")


def plot_noise_scale(result: dict, workdir: str) -> str:
  """B_simple, tr(Sigma) and |G|^2 at each checkpoint."""
  per_step = result["per_step"]
  fig, axes = pyplot().subplots(1, 2, figsize=(8, 3.2))
  steps = [r["step"] for r in per_step]
  axes[0].plot(steps, [r["b_simple"] for r in per_step], "o-", ms=3)
  axes[0].set_ylabel("B_simple = tr(Sigma) / |G|²")
  axes[0].set_yscale("log")
  axes[1].plot(steps, [r["trace_sigma"] for r in per_step], "o-", ms=3, label="tr(Sigma)")
  axes[1].plot(steps, [r["grad_sq"] for r in per_step], "s-", ms=3, label="|G|²")
  axes[1].set_yscale("symlog", linthresh=1e-3)
  axes[1].legend(fontsize=7)
  for ax in axes:
    ax.set_xlabel("updates")
    ax.grid(alpha=0.3)
  fig.suptitle(
    f"Gradient noise scale of {result['label']}, batches {result['b_small']} and "
    f"{result['b_big']} (McCandlish et al.)",
    fontsize=9,
  )
  return _save(fig, workdir, "noise_scale")


PLOTS = {
  "sharpness": plot_sharpness,
  "interpolation": plot_interpolation,
  "landscape": plot_landscape,
  "noise_scale": plot_noise_scale,
}
