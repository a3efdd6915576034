"""Where the gap opens: a batch-size sweep at equal epochs, with B_simple on the same axis.

``python -m experiments.sweep`` trains, for each batch size B of
``--batch_sizes`` (the first is the small-batch baseline B_S), plain LB (the
base regime's learning rate, Keskar et al. 2017's setting) and a remedy
(``--remedy``, e.g. Hoffer et al.'s lb+lr+gbn), all for the base regime's
epochs, into ``WORKDIR/ROW/seed_N`` with table1's resumable runner. Before
that it trains the small-batch run for ``--probe_epochs`` and measures the
gradient noise scale B_simple there (McCandlish et al. 2018). It writes
``sweep.json`` (every number) and ``sweep.png`` (drawn from the JSON): test
accuracy against B with B_simple as a vertical line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import ml_collections

from bigbatch_jax.training import train_and_evaluate
from experiments.sweep import aggregate, figure, noise
from experiments.sweep.grid import PLAIN, PROBE
from experiments.table1.runner import run_all, run_dir


def _line(points: Sequence[Mapping]) -> str:
  return "  ".join(
    f"{p['batch_size']}: " + ("-" if p["test_accuracy"] is None else f"{p['test_accuracy']:.1f}")
    for p in points
  )


def run_sweep(
  configs: Mapping[str, ml_collections.ConfigDict],
  batch_sizes: Sequence[int],
  remedy: str,
  seeds: Sequence[int],
  workdir: str,
  echo: Callable[[str], None],
  gap_threshold: float = 1.0,
  train_fn: Callable[[ml_collections.ConfigDict, str], dict] = train_and_evaluate,
  population: bool = True,
) -> dict:
  """Runs what is not done yet, measures B_simple, writes the JSON and the PNG; returns the JSON.

  Args:
    configs: from ``grid.sweep_configs`` (the probe, then one per run).
    batch_sizes: ascending; the first is the small-batch baseline.
    remedy: the remedy curve's variant.
    seeds: the seeds of every run (the probe uses the first).
    workdir: the sweep's directory (resumable).
    echo: prints a progress line.
    gap_threshold: accuracy points below B_S's that count as a gap.
    train_fn: runs one config in a directory (``train_and_evaluate``).
    population: train each run's seeds as one population (``runner.run_all``).
  """
  probe = {PROBE: configs[PROBE]}
  run_all(probe, seeds[:1], workdir, train_fn, echo)
  measured = noise.measure_b_simple(run_dir(workdir, PROBE, seeds[0]), workdir, batch_sizes[0])
  echo(
    f"B_simple = {measured['b_simple']:.0f} at epoch {measured['epoch']:g} of the "
    f"B={batch_sizes[0]} run (|G|^2 {measured['grad_sq']:.3g}, "
    f"tr Sigma {measured['trace_sigma']:.3g})"
  )
  runs = {name: config for name, config in configs.items() if name != PROBE}
  run_all(runs, seeds, workdir, train_fn, echo, population)
  some = configs[PROBE]
  setup = {"model": some.model, "dataset": some.dataset, "epochs": some.regime.epochs}
  summary = aggregate.summarize(workdir, batch_sizes, remedy, seeds, measured, gap_threshold, setup)
  echo(f"wrote {aggregate.write(summary, workdir)} and {figure.draw_in(workdir)}")
  for variant in (PLAIN, remedy):
    onset = summary["gap_onset"][variant]
    echo(f"{variant:>12} test accuracy (%) by batch size: {_line(summary['curves'][variant])}")
    echo(
      f"{'':>12} gap of >= {gap_threshold:g} points opens at B = {onset}"
      if onset
      else f"{'':>12} no gap of >= {gap_threshold:g} points up to B = {batch_sizes[-1]}"
    )
  return summary
