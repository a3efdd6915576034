"""The run's summary: final and best accuracy, sizes, and the ||w - w0|| fit against log t."""

from __future__ import annotations

import os

import jax

from bigbatch_jax.data.validation import evaluated_split
from bigbatch_jax.training.json_files import write_json_atomic
from bigbatch_jax.training.metrics import fit_log_growth, plot_run
from bigbatch_jax.training.plan import RunPlan


def run_summary(spec, plan: RunPlan, records: list[dict], wall_time: float) -> dict:
  """The summary of a finished run from its plan and its metrics records.

  ``spec``: the run's :class:`~bigbatch_jax.training.spec.RunSpec` (its
  model, data and seed); ``plan``: the run's, or a grid member's.
  """
  evals = [r for r in records if "test_accuracy" in r]
  train = [r for r in records if "weight_distance" in r and r["step"] > 0]
  final = evals[-1] if evals else {}
  # Finished: the planned updates were trained and their final evaluation recorded
  # (a run stopped earlier by stop_after_steps, a signal or a crash is not).
  trained = max((r["step"] for r in records), default=0)
  finished = trained == plan.num_steps and bool(evals) and final["step"] == plan.num_steps
  summary = {
    "variant": plan.variant.name,
    "model": spec.model.model,
    "dataset": spec.data.dataset,
    "seed": spec.settings.seed,
    "batch_size": plan.batch_size,
    "final_batch_size": plan.batch_phases[-1][1],
    "base_batch_size": plan.base_batch_size,
    "ghost_batch_size": plan.ghost_batch_size,
    "lr_rule": plan.lr_rule,
    "lr": plan.regime.lr * plan.lr_scale,
    "noise_variance": plan.noise_variance,
    "num_devices": plan.num_devices,
    "num_train": plan.num_train,
    "updates": plan.num_steps,
    "trained_updates": trained,
    "finished": finished,
    "epochs": plan.regime.epochs,
    # "validation": the accuracies below are the held-out part of the training set.
    "evaluated_split": evaluated_split(spec.data.validation_fraction),
    "test_accuracy": final.get("test_accuracy"),
    "test_error": final.get("test_error"),
    "best_test_accuracy": max((r["test_accuracy"] for r in evals), default=None),
    "train_accuracy": final.get("train_accuracy"),
    "weight_distance": train[-1]["weight_distance"] if train else None,
    "skipped_steps": train[-1].get("skipped_steps", 0) if train else 0,
    "wall_time_s": wall_time,
  }
  if len(train) >= 2:
    fit = fit_log_growth([r["step"] for r in train], [r["weight_distance"] for r in train])
    summary["weight_distance_log_fit"] = fit
  return summary


def write_outputs(
  summary: dict, records: list[dict], workdir: str, title: str, figures: bool = True
) -> None:
  """``summary.json`` and (``figures``) the run's figures, written by process 0."""
  if jax.process_index() != 0:
    return
  write_json_atomic(os.path.join(workdir, "summary.json"), summary, indent=2)
  if figures:
    plot_run(records, workdir, title=title)
