"""Runs the benchmarks of issue 7 and writes experiments/benchmarks/RESULTS.md.

  python -m experiments.benchmarks                       # everything, ~6 minutes on 2 cores
  python -m experiments.benchmarks --quick               # smaller sizes
  python -m experiments.benchmarks --parts=step,overheads --rounds=15

Parts: step (throughput vs BatchNorm, the chunked reference and the jnp.dot
peak, with a profile), overheads (optional parts vs the plain step), pipeline
(epoch vs steps x step), compile_memory (compilations, peak RSS), scaling
(1/2/4 simulated devices). Timings are interleaved side by side and reported
as medians and ratios; the machine's load is recorded with them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import jax

from bigbatch_jax.training.host_memory import retain_freed_host_memory
from experiments.benchmarks import (
  compile_memory,
  overheads,
  pipeline,
  report,
  scaling,
  throughput,
  timing,
)

PARTS = {
  "step": throughput,
  "overheads": overheads,
  "pipeline": pipeline,
  "compile_memory": compile_memory,
  "scaling": scaling,
}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")

# Sizes of the full run and of --quick; a flag given explicitly overrides both.
FULL = {
  "batch": 4096,
  "rounds": 9,
  "peak_size": 4096,
  "epoch_steps": 8,
  "epoch_repeats": 3,
  "memory_batches": [1024, 4096, 16384],
  "profile": True,
}
QUICK = {
  "batch": 1024,
  "rounds": 5,
  "peak_size": 2048,
  "epoch_steps": 8,
  "epoch_repeats": 2,
  "memory_batches": [1024, 4096],
  "profile": True,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python -m experiments.benchmarks", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {list(PARTS)}")
  parser.add_argument("--quick", action="store_true", help="smaller sizes")
  parser.add_argument("--batch", type=int, help="global batch (4096; --quick 1024)")
  parser.add_argument("--hidden", type=int, default=512, help="F1's width (512 in the paper)")
  parser.add_argument("--rounds", type=int, help="interleaved timing rounds")
  parser.add_argument("--peak-size", type=int, help="N of the N x N jnp.dot peak probe")
  parser.add_argument("--epoch-steps", type=int, help="steps of a pipeline/compile epoch")
  parser.add_argument("--epoch-repeats", type=int, help="alternating (epoch, pure) repeats")
  parser.add_argument(
    "--memory-batches", type=lambda s: [int(x) for x in s.split(",")], help="e.g. 1024,4096"
  )
  parser.add_argument("--devices", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
  parser.add_argument(
    "--inner",
    type=int,
    help="calls per timing, averaged (1 on the CPU; 50 on an accelerator, whose steps are "
    "short enough for dispatch to matter)",
  )
  parser.add_argument("--profile", type=int, choices=[0, 1], help="profile the GBN step (CPU)")
  parser.add_argument("--profile-steps", type=int, default=3)
  parser.add_argument("--output", default=RESULTS, help="the markdown results file")
  args = parser.parse_args(argv)
  defaults = QUICK if args.quick else FULL
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
  unknown = sorted(set(args.parts) - set(PARTS))
  if unknown:
    parser.error(f"unknown parts {unknown}; valid: {list(PARTS)}")
  return args


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  # As the launch scripts do (bigbatch_jax/training/host_memory.py); the step
  # part also times a fresh process without it.
  retained = retain_freed_host_memory()
  machine = timing.machine_info()
  machine["freed host memory retained (glibc mallopt)"] = str(retained)
  on_cpu = jax.default_backend() == "cpu"
  if args.inner is None:
    args.inner = 1 if on_cpu else 50
  if not on_cpu:
    # The profile reads the XLA CPU runtime's trace events; RSS and the
    # simulated-device counts are the host's.
    args.profile = 0
  machine["load average at start"] = timing.load_average()
  start = time.perf_counter()
  sections: list[report.Section] = []
  for name in args.parts:
    part_start = time.perf_counter()
    print(f"[{name}] running ...", flush=True)
    for section in PARTS[name].run(args):
      report.print_section(section)
      sections.append(section)
    print(f"[{name}] {time.perf_counter() - part_start:.0f} s", flush=True)
  machine["load average at end"] = timing.load_average()
  machine["benchmark wall time"] = f"{time.perf_counter() - start:.0f} s"
  command = "python -m experiments.benchmarks " + shlex.join(argv)
  preface = (
    "The machine is shared: absolute times move with its load (recorded below), so "
    "every comparison is a ratio of candidates timed interleaved in the same rounds. "
    "See the README's performance section for what the numbers mean."
  )
  report.write_markdown(args.output, command.strip(), machine, sections, preface)
  print(f"\nwrote {args.output}")


if __name__ == "__main__":
  main()
