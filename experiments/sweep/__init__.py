"""Where the gap opens: a batch-size sweep at equal epochs, with B_simple on the same axis.

``python -m experiments.sweep`` trains, for each batch size B of
``--batch_sizes`` (the first is the small-batch baseline B_S), plain LB (the
base regime's learning rate, Keskar et al. 2017's setting), a remedy
(``--remedy``, e.g. Hoffer et al.'s lb+lr+gbn) and, with ``--tuned_lr``, the
sqrt rule (``lb+lr``) at a rate each B selects on the validation split
(``experiments.table1.lr_selection``, the Table 1 driver's protocol), all
for the base regime's epochs, into ``WORKDIR/ROW/seed_N`` with table1's
resumable runner. The B_S run of the first seed is trained in stages and
the gradient noise scale B_simple (McCandlish et al. 2018) is measured along
it at each epoch of ``--noise_epochs`` (``experiments.sweep.noise``). It
writes ``sweep.json`` (every number) and ``sweep.png`` (drawn from the
JSON): test accuracy against B with B_simple's measured values on the same
axis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import ml_collections

from bigbatch_jax.training import train_and_evaluate
from experiments.sweep import aggregate, figure, noise
from experiments.sweep.grid import row, tuned_row
from experiments.table1 import lr_selection
from experiments.table1.runner import run_all


def _line(points: Sequence[Mapping]) -> str:
  return "  ".join(
    f"{p['batch_size']}: " + ("-" if p["test_accuracy"] is None else f"{p['test_accuracy']:.1f}")
    for p in points
  )


def _tuned(configs, batch_sizes, seeds, workdir, train_fn, echo, population, devices) -> dict:
  """Selects each tuned row's rate on the validation split, then trains its seeds at it."""
  tuned = {b: tuned_row(b) for b in batch_sizes if tuned_row(b) in configs}
  selections = {
    b: lr_selection.select_lr(
      name, configs[name], workdir, train_fn, echo, population, member_devices=devices
    )
    for b, name in tuned.items()
  }
  rows = {name: configs[name] for name in tuned.values()}
  chosen = lr_selection.selected_configs(rows, {tuned[b]: s for b, s in selections.items()})
  run_all(chosen, seeds, workdir, train_fn, echo, population, devices)
  return selections


def _report(summary: dict, echo: Callable[[str], None]) -> None:
  for variant, points in summary["curves"].items():
    echo(f"{variant:>12} test accuracy (%) by batch size: {_line(points)}")
  for selection in summary["lr_selection"]:
    edge = f", at the grid's {selection['edge']} end" if selection["edge"] else ""
    echo(
      f"{'':>12} B = {selection['batch_size']}: selected lr {selection['selected_applied_lr']:.3g}"
      f" (base {selection['selected_base_lr']:g} x sqrt(B/B_S){edge})"
    )
  for reading in summary["relation"]["curves"].values():
    echo(f"{'':>12} {reading['reading']}")


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
  noise_epochs: Sequence[float] = (1.0,),
  member_devices: int = 1,
) -> dict:
  """Runs what is not done yet, measures B_simple, writes the JSON and the PNG; returns the JSON.

  Args:
    configs: from ``grid.sweep_configs`` (with the tuned rows when the tuned
      curve is wanted).
    batch_sizes: ascending; the first is the small-batch baseline.
    remedy: the remedy curve's variant.
    seeds: the seeds of every run (B_simple is measured along the first's B_S run).
    workdir: the sweep's directory (resumable).
    echo: prints a progress line.
    gap_threshold: accuracy points below B_S's that count as a gap.
    train_fn: runs one config in a directory (``train_and_evaluate``).
    population: train each run's seeds as one population (``runner.run_all``).
    noise_epochs: the epochs of the B_S run at which B_simple is measured.
    member_devices: the CPU devices a population's members may split over
      (``experiments.table1.devices.placed``; single runs then train on one).
  """
  small = row("sb", batch_sizes[0])
  along = noise.measure_along(
    small, configs[small], workdir, seeds[0], noise_epochs, train_fn, echo, member_devices
  )
  fixed = {name: config for name, config in configs.items() if not name.startswith("tuned_")}
  run_all(fixed, seeds, workdir, train_fn, echo, population, member_devices)
  selections = _tuned(
    configs, batch_sizes, seeds, workdir, train_fn, echo, population, member_devices
  )
  some = configs[small]
  setup = {"model": some.model, "dataset": some.dataset, "epochs": some.regime.epochs}
  summary = aggregate.summarize(
    workdir, batch_sizes, remedy, seeds, along, gap_threshold, setup, selections
  )
  echo(f"wrote {aggregate.write(summary, workdir)} and {figure.draw_in(workdir)}")
  _report(summary, echo)
  return summary
