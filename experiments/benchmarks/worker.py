"""One measurement in a fresh process, printed as JSON (compile_memory, scaling, population).

RSS is per process and the simulated device count is fixed when JAX starts,
so these measurements each get their own interpreter:

  python -m experiments.benchmarks.worker memory --batch=4096 --donate=1
  XLA_FLAGS=--xla_force_host_platform_device_count=4 \
    python -m experiments.benchmarks.worker scaling --batch=4096 --devices=4
  python -m experiments.benchmarks.worker host_memory --batch=4096 --retain=0

Each applies ``retain_freed_host_memory`` first, as the launch scripts do,
unless ``--retain=0``.
"""

from __future__ import annotations

import json
import resource
import statistics
import time

from absl import app, flags

from bigbatch_jax.training.host_memory import retain_freed_host_memory


def peak_rss_kib() -> int:
  """This process's peak resident set in KiB.

  ``VmHWM`` of /proc/self/status where there is one: ``ru_maxrss`` of a
  process started by fork and exec keeps the parent's peak when that is
  larger (Linux copies it across fork), which here is the benchmark driver's.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1])
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory(args) -> dict:
  """Peak RSS of a process that builds the step and runs a few updates."""
  import jax

  from bigbatch_jax.training import parallel
  from experiments.benchmarks import steps, timing

  baseline_kib = peak_rss_kib()
  config = steps.f1_config("lb+lr+gbn", args.batch)
  built = steps.build_step(config, donate=bool(args.donate), hidden=args.hidden)
  compiled = built.fn.lower(built.state, built.batch).compile()
  for _ in range(args.steps):
    timing.block(built.run())
  return {
    "batch": args.batch,
    "donate": bool(args.donate),
    "baseline_mib": baseline_kib / 1024,
    "peak_rss_mib": peak_rss_kib() / 1024,
    "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "step_bytes": parallel.step_memory_bytes(compiled),
    "devices": jax.device_count(),
  }


def scaling(args) -> dict:
  """Step time, examples/s and the results after a few updates on ``devices`` devices."""
  import jax
  import numpy as np

  from experiments.benchmarks import steps, timing

  config = steps.f1_config("lb+lr+gbn", args.batch, ghost_batch_size=args.ghost)
  built = steps.build_step(config, num_devices=args.devices, hidden=args.hidden)
  seconds, metrics = [], None
  for i in range(args.steps + 1):
    start = time.perf_counter()
    state, metrics = built.run()
    timing.block((state, metrics))
    if i:  # the first call waits for the compilation
      seconds.append(time.perf_counter() - start)
  step_s = statistics.median(seconds)
  params = jax.device_get(built.state.params)
  return {
    "devices": args.devices,
    "available_devices": jax.device_count(),
    "batch": args.batch,
    "per_device_batch": args.batch // args.devices,
    "step_s": step_s,
    "examples_per_s": args.batch / step_s,
    "loss": float(metrics["loss"]),
    "params_sum": float(sum(np.abs(v).sum() for v in jax.tree.leaves(params))),
    "steps": args.steps + 1,
  }


def host_memory(args) -> dict:
  """The GBN step's fraction of the dot peak and its page faults, with or without retention.

  The retention is process-wide and must precede JAX's start (main() applies
  it or not), so each setting gets its own process; within one, the step, its
  dots and the peak are timed interleaved, so the ratios are load-robust.
  """
  from experiments.benchmarks import steps, timing

  config = steps.f1_config("lb+lr+gbn", args.batch)
  built = steps.build_step(config, hidden=args.hidden)
  candidates = {
    "peak": steps.square_matmul(args.peak_size),
    "dots": steps.step_dots(args.batch, args.hidden),
    "step": built.run,
  }
  t = timing.interleaved(candidates, rounds=args.steps)
  timing.block(built.run())
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(3):
    timing.block(built.run())
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
  flops, peak_flops = steps.step_flops(args.batch, args.hidden), steps.matmul_flops(args.peak_size)
  return {
    "retain": bool(args.retain),
    "step_s": t.median("step"),
    "dots_s": t.median("dots"),
    "step_over_dots": t.ratio("step", "dots"),
    "fraction": flops / peak_flops * t.ratio("peak", "step"),
    "dots_fraction": flops / peak_flops * t.ratio("peak", "dots"),
    "faults_per_step": faults,
  }


def population(args) -> dict:
  """A Table 1 row's population, its members split over ``--devices``, against single runs."""
  from experiments.benchmarks import population

  batch = population.row_batch(args.variant)
  if args.batch != batch:
    raise app.UsageError(f"--batch={args.batch}, but row {args.variant!r} trains at batch {batch}")
  return population.case(args.variant, args.members, args.steps, args.peak_size, args.devices)


flags.DEFINE_integer("batch", None, "global batch", required=True)
flags.DEFINE_string("variant", "sb", "the Table 1 row (population)")
flags.DEFINE_integer("members", 10, "the population's members (population)")
flags.DEFINE_integer("hidden", 512, "F1's width")
flags.DEFINE_integer("donate", 1, "donate the state to the step (memory)")
flags.DEFINE_integer("devices", 1, "devices of the mesh (scaling); member devices (population)")
flags.DEFINE_integer("steps", 3, "updates or timing rounds")
flags.DEFINE_integer("ghost", 128, "ghost batch size (scaling)")
flags.DEFINE_integer("peak_size", 4096, "N of the jnp.dot peak probe (host_memory)")
flags.DEFINE_integer("retain", 1, "retain_freed_host_memory, as the launch scripts do")
MEASUREMENTS = {
  "memory": memory,
  "scaling": scaling,
  "host_memory": host_memory,
  "population": population,
}


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in MEASUREMENTS:
    raise app.UsageError(f"give one measurement of {list(MEASUREMENTS)}, got {argv[1:]}")
  args = flags.FLAGS
  if args.retain:
    retain_freed_host_memory()  # before JAX starts
  print("RESULT " + json.dumps(MEASUREMENTS[argv[1]](args)))


if __name__ == "__main__":
  app.run(main)
