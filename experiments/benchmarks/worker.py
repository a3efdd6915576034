"""One measurement in a fresh process, printed as JSON (used by compile_memory and scaling).

RSS is per process and the simulated device count is fixed when JAX starts,
so these measurements each get their own interpreter:

  python -m experiments.benchmarks.worker memory --batch=4096 --donate=1
  XLA_FLAGS=--xla_force_host_platform_device_count=4 \
    python -m experiments.benchmarks.worker scaling --batch=4096 --devices=4
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time


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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("what", choices=["memory", "scaling"])
  parser.add_argument("--batch", type=int, required=True)
  parser.add_argument("--hidden", type=int, default=512)
  parser.add_argument("--donate", type=int, default=1)
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--ghost", type=int, default=128, help="ghost batch size (scaling)")
  args = parser.parse_args()
  result = memory(args) if args.what == "memory" else scaling(args)
  print("RESULT " + json.dumps(result))


if __name__ == "__main__":
  main()
