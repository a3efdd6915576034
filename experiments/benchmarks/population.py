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

Two ceilings bound the speed-up from the work both sides must do, F1's
products (forward, weight and input gradients): timed in the same rounds,
(P single runs' time per update) over (a) the time of those dot FLOPs
(``steps.step_flops``) at the machine's ``jnp.dot`` peak (an N x N float32
product), and over (b) the population's own products alone, batched by
``jax.vmap`` and scanned as its call scans them (``steps.population_dots``),
everything else free. A target above (b) cannot be met by a vmapped
population on this machine, however little the rest of its step costs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from bigbatch_jax.configs import f1
from bigbatch_jax.training import parallel
from bigbatch_jax.training import spec as spec_lib
from bigbatch_jax.training.loop import CompiledSteps, next_batches
from bigbatch_jax.training.setup import set_up_run
from experiments.benchmarks import profile as profile_lib
from experiments.benchmarks import steps as steps_lib
from experiments.benchmarks import timing
from experiments.benchmarks.report import Section, Target
from experiments.benchmarks.subprocesses import run_worker
from experiments.table1 import rows

# (name, Table 1 row's variant, members, the speed-up target or None, member devices)
CASES = (
  ("SB (B=64), P=3", "sb", 3, 2.5, 1),
  ("+RA (B=1024), P=3", "lb+lr+gbn+ra", 3, 1.8, 1),
  ("SB (B=64), P=10", "sb", 10, 4.0, 1),
  ("SB (B=64), P=10, members over 2 devices", "sb", 10, 4.0, 2),
  ("+RA (B=1024), P=10, members over 2 devices", "lb+lr+gbn+ra", 10, 1.8, 2),
  # One member per device: stepped without the member vmap (population_train_step).
  ("+RA (B=1024), P=2, one member per device", "lb+lr+gbn+ra", 2, None, 2),
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


def row_batch(variant: str) -> int:
  """The batch size the row trains at (its resolved plan's)."""
  config, dataset = row_config(variant)
  return spec_lib.resolve(config, num_train=dataset.num_train, num_devices=1).plan.batch_size


def f1_sizes(spec: spec_lib.RunSpec, input_shape) -> tuple[int, int, int]:
  """(hidden, depth, input dim) of the row's F1."""
  if spec.model.model != "f1":
    raise ValueError(f"the population benchmark times F1 rows; got model {spec.model.model!r}")
  options = dict(spec.model.model_options)
  return options["hidden"], options["depth"], int(np.prod(input_shape))


def dot_flops_per_update(spec: spec_lib.RunSpec, input_shape) -> int:
  """FLOPs of one update's dots of the row's F1 (``steps.step_flops``)."""
  return steps_lib.step_flops(spec.plan.batch_size, *f1_sizes(spec, input_shape))


@dataclasses.dataclass
class RowCalls:
  """A row's P single runs and its population of P, compiled, with fixed host batches.

  ``one_single`` advances the first single run by one call, ``singles`` all
  P of them one after another, ``together`` the population by one call
  (each call ``length`` updates); ``single_text`` and ``population_text``
  are the compiled calls' HLO (``profile.profile_step`` names ops by it);
  ``population_devices`` the devices that hold the population's members.
  """

  spec: spec_lib.RunSpec
  size: int
  length: int
  shape: tuple[int, ...]
  one_single: Callable[[], Any]
  singles: Callable[[], Any]
  together: Callable[[], Any]
  single_text: str
  population_text: str
  population_devices: int


def row_calls(variant: str, members: int, member_devices: int = 1) -> RowCalls:
  """The calls ``train_and_evaluate`` compiles for the row, single and as a population."""
  rng = np.random.default_rng(0)
  config, dataset = row_config(variant)
  mesh = parallel.make_mesh(1)
  spec = spec_lib.resolve(config, num_train=dataset.num_train, num_devices=mesh.size)
  plan = spec.plan
  size, length = plan.batch_size, min(config.steps_per_call, plan.num_steps)
  shape = dataset.input_shape
  seeds = tuple(range(members))
  runs = [set_up_run(spec, mesh, dataset.num_classes, shape, seed=s) for s in seeds]
  single_steps = CompiledSteps(runs[0], mesh, shape, plan)
  single_call = single_steps.get(size, length)
  population_mesh = parallel.make_mesh(member_devices, member_devices)
  population = set_up_run(spec, population_mesh, dataset.num_classes, shape, seeds=seeds)
  population_steps = CompiledSteps(population, population_mesh, shape, plan, members)
  population_call = population_steps.get(size, length)
  states = {"single": [r.state for r in runs], "population": population.state}
  single_batches = _Batches(rng, length, size, shape, None)
  population_batches = _Batches(rng, length, size, shape, members)

  def single(i):
    batch = next_batches(single_batches, length, mesh)
    states["single"][i], _ = single_call(states["single"][i], batch)
    return states["single"][i]

  def singles():
    return [single(i) for i in range(members)]

  def together():
    batch = next_batches(population_batches, length, population_mesh, members=True)
    states["population"], _ = population_call(states["population"], batch)
    return states["population"]

  return RowCalls(
    spec,
    size,
    length,
    shape,
    lambda: single(0),
    singles,
    together,
    single_steps.executable(size, length).as_text(),
    population_steps.executable(size, length).as_text(),
    len(jax.tree.leaves(population.state)[0].sharding.device_set),
  )


def case(variant: str, members: int, rounds: int, peak_size: int, member_devices: int = 1) -> dict:
  """One row's timings: P single runs on one device against the population of P.

  ``member_devices`` > 1: the population's members split over that many
  devices (``parallel.make_mesh``; the process needs them, see
  ``run_worker``); its ceiling (b) is then None (the dots it times run on
  one device).
  """
  calls = row_calls(variant, members, member_devices)
  spec, size, length, shape = calls.spec, calls.size, calls.length, calls.shape
  candidates = {
    "single": calls.singles,
    "population": calls.together,
    "peak": steps_lib.square_matmul(peak_size),
  }
  if member_devices == 1:
    dots = steps_lib.population_dots(members, length, size, *f1_sizes(spec, shape))
    candidates["population dots"] = dots
  timings = timing.interleaved(candidates, rounds)
  # (P singles' seconds per update) / (P dot FLOPs per update / peak FLOP/s), per round.
  dot_seconds = members * dot_flops_per_update(spec, shape) / steps_lib.matmul_flops(peak_size)
  return {
    "batch": size,
    "steps_per_call": length,
    "single_ms": timings.median("single") / length * 1e3,
    "population_ms": timings.median("population") / length * 1e3,
    "speedup": 1.0 / timings.ratio("population", "single"),
    "spread": tuple(1.0 / q for q in reversed(timings.ratio_spread("population", "single"))),
    "peak_ceiling": timings.ratio("single", "peak") / length / dot_seconds,
    "dots_ceiling": timings.ratio("single", "population dots") if member_devices == 1 else None,
    # The devices that hold the population's members, as timed.
    "population_devices": calls.population_devices,
  }


# (name, Table 1 row's variant, members): profiled on one device.
PROFILED = (("SB (B=64), P=3", "sb", 3), ("+RA (B=1024), P=3", "lb+lr+gbn+ra", 3))

PROFILE_TEXT = (
  "Where the time of one update goes: a jax.profiler trace of one single run's call and of "
  "the population's call (one device, the calls timed above), each op's busy time attributed "
  "by its JAX op name (``profile.profile_step``), per update. For P members to cost less than "
  "P single runs, the population's time in a category must grow less than P-fold; the "
  "runtime's share (the scan's loop and the ops' dispatch inside XLA: the traced wall time no "
  "op accounts for) is the part P members share."
)


def update_profile(variant: str, members: int, steps: int = 5) -> dict[str, dict[str, float]]:
  """Busy ms per update by category and the traced wall time: a single run, then the population."""
  calls = row_calls(variant, members)

  def per_update(run, text):
    traced = profile_lib.profile_step(run, text, steps)
    shares = {k: v / calls.length for k, v in traced["categories"].items()}
    return {**shares, "whole update (traced wall time)": traced["wall_ms"] / calls.length}

  return {
    "single": per_update(calls.one_single, calls.single_text),
    "population": per_update(calls.together, calls.population_text),
  }


def _profile_section() -> Section:
  rows = []
  for name, variant, members in PROFILED:
    print(f"  profile {name} ...", flush=True)
    measured = update_profile(variant, members)
    for category, single in measured["single"].items():
      together = measured["population"][category]
      ratio = f"{together / single:.2f}" if single > 0 else ""
      rows.append([name, category, f"{single:.3f}", f"{together:.3f}", ratio])
  header = ["row, members", "part of the update", "one single run, ms", "population, ms", "ratio"]
  title = "Populations against single runs: where an update's time goes"
  return Section(title, header, rows, PROFILE_TEXT)


def _measured(variant: str, members: int, member_devices: int, args) -> dict:
  """``case`` here, or in a fresh process with ``member_devices`` simulated CPU devices."""
  if member_devices == 1:
    return case(variant, members, args.rounds, args.peak_size)
  return run_worker(
    [
      "population",
      f"--batch={row_batch(variant)}",
      f"--variant={variant}",
      f"--members={members}",
      f"--devices={member_devices}",
      f"--steps={args.rounds}",
      f"--peak_size={args.peak_size}",
    ],
    devices=member_devices,
    timeout=3600,
  )


def _ceiling_note(ceiling: float | None, bound: float) -> str:
  """The target's note: above the population's dots-alone ceiling, it is out of reach."""
  note = "P single runs' per-update time / the population's"
  if ceiling is None:
    return f"{note}; members split over devices, no ceiling (b)"
  note = f"{note}; ceiling (b) {ceiling:.2f}"
  if bound > ceiling:
    return f"{note}: the target is above it, out of reach here for a vmapped population"
  return note


def run(args) -> list[Section]:
  rows, targets = [], []
  for name, variant, members, bound, member_devices in CASES:
    print(f"  {name} ...", flush=True)
    r = _measured(variant, members, member_devices, args)
    rows.append(
      [
        name,
        str(r["batch"]),
        str(r["steps_per_call"]),
        f"{r['single_ms']:.2f}",
        f"{r['population_ms']:.2f}",
        f"{r['speedup']:.2f}",
        f"{r['spread'][0]:.2f}-{r['spread'][1]:.2f}",
        f"{r['peak_ceiling']:.2f}",
        "" if r["dots_ceiling"] is None else f"{r['dots_ceiling']:.2f}",
      ]
    )
    if bound is None:
      continue
    targets.append(
      Target(
        f"population speed-up, {name}",
        r["speedup"],
        f">= {bound}",
        r["speedup"] >= bound,
        _ceiling_note(r["dots_ceiling"], bound),
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
    "ceiling (a): dots at the jnp.dot peak",
    "ceiling (b): the population's dots alone",
  ]
  text = __doc__.split("\n\n", 1)[1].strip().replace("\n", " ")
  section = Section("Populations against single runs (Table 1 rows)", header, rows, text, targets)
  return [section, _profile_section()]
