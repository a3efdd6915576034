"""Hoffer et al. Table 1 end to end: every regime variant, several seeds, one table.

  python -m experiments.table1                      # quick reproduction on MNIST-1D, CPU
  python -m experiments.table1 --config=experiments/configs/f1.py --config.dataset=tfds:mnist

Runs the rows one after another (``rows.DEFAULT_VARIANTS``: SB, LB, +LR,
+GBN, +RA, then the noise remedies at equal epochs; ``--variants=all`` adds
``sb@2x``, the regime-adapted rows without Ghost BN and the r = 4 rows) for
each seed (ten by default) with
``bigbatch_jax.training.train_and_evaluate`` in ``WORKDIR/ROW/seed_N``, then
writes to ``--workdir``:

* ``table1.json``: the numbers (rows, the seed-mean curves, the claims with
  the numbers and the test each was decided on, meta), and ``table1.md``.
* the figures of ``figures.FIGURES``, drawn from ``table1.json`` alone.

The modules, one job each: ``rows`` (row names, flags, one config per row),
``runner`` (resumable runs), ``measures`` (sharpness, update covariance),
``aggregate`` (the numbers), ``paper_claims`` (the papers' claims, each a test
of ``bigbatch_jax.statistics`` that can come out shown, contradicted or
inconclusive), ``report`` (Markdown and JSON), ``figures`` (plots from the JSON),
``__main__`` (the command line), and ``ablation`` (``--ablation=sb,lb``:
each artefact of the reference protocol alone and all together).
How the quick preset was chosen is in docs/table1_preset.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence

import ml_collections

from bigbatch_jax.training import train_and_evaluate
from experiments.table1 import figures, lr_selection, measures
from experiments.table1.aggregate import aggregate, run_curves
from experiments.table1.figures import FIGURES
from experiments.table1.paper_claims import claims
from experiments.table1.report import format_table, write_table
from experiments.table1.rows import (
  DEFAULT_VARIANTS,
  EVALS_PER_RUN,
  LABELS,
  LOGS_PER_RUN,
  parse_seeds,
  parse_variants,
  resolve_preset,
  schedule_records,
  variant_config,
)
from experiments.table1.runner import finished, run_all, run_dir

__all__ = [
  "DEFAULT_VARIANTS", "EVALS_PER_RUN", "FIGURES", "LABELS", "LOGS_PER_RUN", "aggregate", "claims",
  "format_table", "parse_seeds", "parse_variants", "resolve_preset", "run_curves", "run_table",
  "schedule_records", "variant_config",
]  # fmt: skip


# λ_max is a descriptive column, no claim is tested on it: the first three
# seeds of each row give its mean at a fraction of the cost of ten.
HESSIAN_SEEDS = 3


def _measure(configs, seeds, workdir, hessian: bool, covariance: bool) -> dict[str, dict]:
  """Sharpness of the first ``HESSIAN_SEEDS`` finished runs of each row (cached) and the rows'
  update covariance at w0."""
  if hessian:
    for row in configs:
      for seed in seeds[:HESSIAN_SEEDS]:
        if finished(run_dir(workdir, row, seed)):
          measures.top_hessian_eigenvalue(run_dir(workdir, row, seed))
  if not covariance or "sb" not in configs:
    return {}
  return measures.update_covariance_traces(configs, run_dir(workdir, "sb", seeds[0]), workdir)


def run_table(
  configs: Mapping[str, ml_collections.ConfigDict],
  seeds: Sequence[int],
  workdir: str,
  *,
  paper_accuracy: Mapping[str, float] | None = None,
  paper_dataset: str | None = None,
  preset: str = "",
  train_fn: Callable[[ml_collections.ConfigDict, str], dict] = train_and_evaluate,
  echo: Callable[[str], None] = print,
  hessian: bool = True,
  covariance: bool = True,
  paper_data: bool | None = None,
  population: bool = True,
  select_lr: bool = False,
  num_train: int | None = None,
  member_devices: int = 1,
) -> list[dict]:
  """Runs every (row, seed) not yet finished, then writes the table, JSON and figures.

  Args:
    configs: row name (``rows.LABELS``) -> its config (the seed is set here).
    seeds: the seeds of every row.
    workdir: output directory; runs go to ``workdir/ROW/seed_N``.
    paper_accuracy: the paper's accuracy (%) per row, shown when the
      configs' dataset is ``paper_dataset``.
    paper_dataset: the dataset the paper's numbers are for.
    preset: the preset name, recorded in the outputs.
    train_fn: runs one config in a directory (``train_and_evaluate``).
    echo: where progress lines go.
    hessian: measure each finished run's top Hessian eigenvalue (a column).
    covariance: measure each row's update covariance at SB's w0 (a column).
    paper_data: whether the data is the paper's (``rows.is_mnist``); None:
      whether the configs' dataset is named ``paper_dataset``.
    population: train each row's seeds as one population (``runner.run_all``).
    select_lr: first choose each row's learning rate on a validation split
      (``lr_selection``), then run the seeds at it.
    num_train: the training set's size (a growing batch capped there is
      capped at the kept part during the selection).
    member_devices: the CPU devices a population's members may split over
      (``devices.placed``; single runs then train on one); 1: the configs'
      own devices.

  Returns:
    The table rows (also in ``workdir/table1.json``).
  """
  start = time.perf_counter()
  selections = {}
  if select_lr:
    for row, config in configs.items():
      selections[row] = lr_selection.select_lr(
        row, config, workdir, train_fn, echo, population, num_train, member_devices
      )
    configs = lr_selection.selected_configs(configs, selections)
  ran = run_all(configs, seeds, workdir, train_fn, echo, population, member_devices)
  traces = _measure(configs, seeds, workdir, hessian, covariance)
  some = next(iter(configs.values()))
  if paper_data is None:
    paper_data = some.dataset == paper_dataset
  show_paper = paper_accuracy is not None and paper_data
  rows = aggregate(workdir, list(configs), seeds, paper_accuracy if show_paper else None, traces)
  for row in rows:
    if row["variant"] in selections:
      row["lr_selection"] = selections[row["variant"]]
  meta = {
    "dataset": some.dataset,
    "model": some.model,
    "preset": preset,
    "base_batch_size": some.base_batch_size,
    "large_batch_size": some.large_batch_size,
    "seeds": list(seeds),
    "paper_dataset": paper_dataset,
    "driver_wall_time_s": time.perf_counter() - start,
    "runs_run": ran,
    "runs_skipped": len(configs) * len(seeds) - ran,
    "member_devices": member_devices,
  }
  if select_lr:
    meta["lr_selection"] = {
      "factors": list(lr_selection.LR_FACTORS),
      "extension_factors": list(lr_selection.EXTENSION_FACTORS),
      "max_extensions": lr_selection.MAX_EXTENSIONS,
      "seeds": list(lr_selection.SELECTION_SEEDS),
      "validation_fraction": lr_selection.VALIDATION_FRACTION,
    }
  write_table(rows, workdir, meta)
  figures.plot_all(workdir)
  echo(format_table(rows, meta))
  echo(f"wrote {os.path.join(workdir, 'table1.md')}, table1.json and {', '.join(FIGURES)}")
  return rows
