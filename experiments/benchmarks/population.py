"""Part "population": P single runs one after another against one population of P.

For rows of the default Table 1 (``experiments/configs/f1.py:VARIANT,table1``:
F1 128 x 3 on MNIST-1D), the per-update cost of training P seeds as P single
runs (P states, each advanced by the row's compiled call, one after another)
is timed against one population of P members (one state with a member axis,
one compiled call of ``population.population_train_steps``). Both are the
calls ``train_and_evaluate`` compiles (``loop.CompiledSteps``) at the
``steps_per_call`` the Table 1 driver gives the row (``rows.whole_calls``:
SB and +RA scan 50 updates per call), fed host batches through
``put_batch`` as the loop does;
compilation, evaluation and the data pipeline's gather are outside the timing.
The speed-up is the median over interleaved rounds of (P single calls) /
(one population call).
"""

from __future__ import annotations

import numpy as np

from bigbatch_jax.configs import f1
from bigbatch_jax.training import parallel
from bigbatch_jax.training import spec as spec_lib
from bigbatch_jax.training.loop import CompiledSteps, next_batches
from bigbatch_jax.training.setup import set_up_run
from experiments.benchmarks import timing
from experiments.benchmarks.report import Section, Target
from experiments.table1 import rows

# (name, Table 1 row's variant, members, the speed-up target)
CASES = (
  ("SB (B=64), P=3", "sb", 3, 2.5),
  ("+RA (B=1024), P=3", "lb+lr+gbn+ra", 3, 1.8),
  ("SB (B=64), P=10", "sb", 10, 4.0),
)


class _Batches:
  """Host batches of one call, fixed: the timing covers the transfer and the step."""

  def __init__(self, rng, length: int, batch: int, input_shape, members: int | None):
    lead = () if members is None else (members,)
    self._chunk = [
      {
        "x": rng.standard_normal((*lead, batch, *input_shape)).astype(np.float32),
        "y": rng.integers(0, 10, (*lead, batch)).astype(np.int32),
      }
      for _ in range(length)
    ]
    self._i = 0

  def __next__(self):
    batch = self._chunk[self._i % len(self._chunk)]
    self._i += 1
    return batch


def row_config(variant: str):
  """The default Table 1 row's config, with the periods and call length its driver sets."""
  config = f1.get_config(f"{variant},table1")
  dataset = spec_lib.load_data(config)
  rows.schedule_records(config, dataset.num_train)
  return config, dataset


def _case(variant: str, members: int, rounds: int, rng) -> dict:
  config, dataset = row_config(variant)
  mesh = parallel.make_mesh(1)
  spec = spec_lib.resolve(config, num_train=dataset.num_train, num_devices=mesh.size)
  plan = spec.plan
  size, length = plan.batch_size, min(config.steps_per_call, plan.num_steps)
  shape = dataset.input_shape
  seeds = tuple(range(members))
  runs = [set_up_run(spec, mesh, dataset.num_classes, shape, seed=s) for s in seeds]
  single_call = CompiledSteps(runs[0], mesh, shape, plan).get(size, length)
  population = set_up_run(spec, mesh, dataset.num_classes, shape, seeds=seeds)
  population_call = CompiledSteps(population, mesh, shape, plan, members).get(size, length)
  states = {"single": [r.state for r in runs], "population": population.state}
  single_batches = _Batches(rng, length, size, shape, None)
  population_batches = _Batches(rng, length, size, shape, members)

  def singles():
    for i in range(members):
      batch = next_batches(single_batches, length, mesh)
      states["single"][i], _ = single_call(states["single"][i], batch)
    return states["single"]

  def together():
    batch = next_batches(population_batches, length, mesh, members=True)
    states["population"], _ = population_call(states["population"], batch)
    return states["population"]

  timings = timing.interleaved({"single": singles, "population": together}, rounds)
  return {
    "batch": size,
    "steps_per_call": length,
    "single_ms": timings.median("single") / length * 1e3,
    "population_ms": timings.median("population") / length * 1e3,
    "speedup": 1.0 / timings.ratio("population", "single"),
    "spread": tuple(1.0 / q for q in reversed(timings.ratio_spread("population", "single"))),
  }


def run(args) -> list[Section]:
  rng = np.random.default_rng(0)
  rows, targets = [], []
  for name, variant, members, bound in CASES:
    print(f"  {name} ...", flush=True)
    r = _case(variant, members, args.rounds, rng)
    rows.append(
      [
        name,
        str(r["batch"]),
        str(r["steps_per_call"]),
        f"{r['single_ms']:.2f}",
        f"{r['population_ms']:.2f}",
        f"{r['speedup']:.2f}",
        f"{r['spread'][0]:.2f}-{r['spread'][1]:.2f}",
      ]
    )
    targets.append(
      Target(
        f"population speed-up, {name}",
        r["speedup"],
        f">= {bound}",
        r["speedup"] >= bound,
        "P single runs' per-update time / the population's",
      )
    )
  header = [
    "row, members",
    "batch",
    "steps per call",
    "P single runs, ms per update",
    "population, ms per update",
    "speed-up",
    "speed-up IQR",
  ]
  text = __doc__.split("\n\n", 1)[1].strip().replace("\n", " ")
  return [Section("Populations against single runs (Table 1 rows)", header, rows, text, targets)]
