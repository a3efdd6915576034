"""The sweep's numbers: test accuracy per (curve, batch size), B_simple, where the gap opens.

Everything the figure shows is in ``sweep.json``; the figure is drawn from
that file alone (``experiments.sweep.figure.draw``). The relation between
the gap and B_simple is read only as measured: per curve, the batch size
where the gap opens beside the range of B_simple along the B_S run, and
whether it lies inside that range (a computed yes/no, nothing more).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from bigbatch_jax.training import json_files
from experiments.sweep.grid import PLAIN, TUNED, row, tuned_row
from experiments.table1.aggregate import std
from experiments.table1.runner import finished, read_json, run_dir

JSON_FILE = "sweep.json"


def _accuracies(workdir: str, name: str, seeds: Sequence[int]) -> tuple[list[float], int]:
  """The finished seeds' test accuracies (%) and how many seeds diverged."""
  values, diverged = [], 0
  for seed in seeds:
    directory = run_dir(workdir, name, seed)
    if finished(directory):
      values.append(100 * read_json(os.path.join(directory, "summary.json"))["test_accuracy"])
    elif os.path.exists(os.path.join(directory, "failed.json")):
      diverged += 1
  return values, diverged


def curve(workdir: str, variant: str, batch_sizes: Sequence[int], seeds: Sequence[int]) -> list:
  """One point per batch size; the first is the shared small-batch (``sb``) run.

  The tuned curve (``TUNED``) reads its own rows, B_S's included (its rate is
  selected too).
  """
  points = []
  for i, b in enumerate(batch_sizes):
    name = tuned_row(b) if variant == TUNED else row("sb" if i == 0 else variant, b)
    values, diverged = _accuracies(workdir, name, seeds)
    mean = sum(values) / len(values) if values else None
    points.append(
      {
        "batch_size": b,
        "test_accuracy": mean,
        "std": std(values) if values else None,
        "seeds": values,
        "diverged": diverged,
      }
    )
  return points


def gap_onset(points: Sequence[Mapping], threshold: float) -> int | None:
  """The smallest batch whose accuracy is ``threshold`` points or more below the first's.

  A diverged or missing point counts as below. None: no batch size opens a gap.
  """
  first = points[0]["test_accuracy"]
  if first is None:
    return None
  for p in points[1:]:
    if p["test_accuracy"] is None or p["test_accuracy"] <= first - threshold:
      return p["batch_size"]
  return None


def selection_record(batch_size: int, b_small: int, selection: Mapping) -> dict:
  """One batch size's lr selection: its grid as base and as applied rates, what was chosen."""
  factor = (batch_size / b_small) ** 0.5  # the sqrt rule applies to every rate of the grid
  return {
    "batch_size": batch_size,
    "row": tuned_row(batch_size),
    "sqrt_factor": factor,
    "base_lrs": selection["lrs"],
    "applied_lrs": [lr * factor for lr in selection["lrs"]],
    "validation_accuracy_mean": selection["validation_accuracy_mean"],
    "validation_accuracy_per_seed": selection["validation_accuracy_per_seed"],
    "selected_base_lr": selection["selected_lr"],
    "selected_applied_lr": selection["selected_lr"] * factor,
    "ties": selection["ties"],
    "edge": selection["edge"],
    "extensions": selection["extensions"],
    "selection_seeds": selection["selection_seeds"],
    "validation_fraction": selection["validation_fraction"],
  }


def relation(noise: Mapping | None, onsets: Mapping[str, int | None], last_b: int) -> dict:
  """Per curve: where its gap opens beside B_simple's measured range, as numbers and a line.

  ``onset_within_b_simple_range`` is whether the onset lies between the
  smallest and the largest B_simple measured along the B_S run (None when
  either is missing); no other agreement is computed.
  """
  values = [r["b_simple"] for r in (noise or {}).get("along", [])]
  epochs = [r["epoch"] for r in (noise or {}).get("along", [])]
  low, high = (min(values), max(values)) if values else (None, None)
  head = (
    f"B_simple {low:.0f}-{high:.0f} over epochs {epochs[0]:g}-{epochs[-1]:g}"
    if values
    else "B_simple not measured"
  )
  out = {"b_simple_min": low, "b_simple_max": high, "epochs": epochs, "curves": {}}
  for variant, onset in onsets.items():
    within = None if onset is None or low is None else bool(low <= onset <= high)
    where = f"gap opens at B = {onset}" if onset else f"no gap up to B = {last_b}"
    if within is not None:
      where += " (inside that range)" if within else " (outside that range)"
    out["curves"][variant] = {
      "gap_onset": onset,
      "onset_within_b_simple_range": within,
      "reading": f"{head}; {variant} {where}",
    }
  return out


def summarize(
  workdir: str,
  batch_sizes: Sequence[int],
  remedy: str,
  seeds: Sequence[int],
  noise: Mapping | None,
  threshold: float,
  setup: Mapping,
  selections: Mapping[int, Mapping] | None = None,
) -> dict:
  """The sweep's JSON document (see the module docstring).

  Args:
    selections: batch size -> ``lr_selection.select_lr``'s record, when the
      tuned curve ran.
  """
  variants = (PLAIN, remedy, TUNED) if selections else (PLAIN, remedy)
  curves = {v: curve(workdir, v, batch_sizes, seeds) for v in variants}
  onsets = {v: gap_onset(points, threshold) for v, points in curves.items()}
  return {
    "setup": dict(setup),
    "seeds": list(seeds),
    "batch_sizes": list(batch_sizes),
    "curves": curves,
    "gap_threshold": threshold,
    "gap_onset": onsets,
    "noise_scale": dict(noise) if noise else None,
    "lr_selection": [selection_record(b, batch_sizes[0], s) for b, s in (selections or {}).items()],
    "relation": relation(noise, onsets, batch_sizes[-1]),
  }


def write(summary: Mapping, workdir: str) -> str:
  path = os.path.join(workdir, JSON_FILE)
  json_files.write_json_atomic(path, summary, indent=2)
  return path
