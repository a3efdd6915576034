"""Runs the benchmarks and writes experiments/benchmarks/RESULTS.md.

  python -m experiments.benchmarks                       # everything, ~6 minutes on 2 cores
  python -m experiments.benchmarks --quick               # smaller sizes
  python -m experiments.benchmarks --parts=step,overheads --rounds=15

Flags are absl flags, as in the other entry points (--helpfull lists them).

Parts: step (throughput vs BatchNorm, the chunked reference and the jnp.dot
peak, with a profile), overheads (optional parts vs the plain step), pipeline
(epoch vs steps x step), normalizers (the Ghost Noise Injection step vs the
BatchNorm and Ghost BN steps), compile_memory (compilations, peak RSS), scaling
(1/2/4 simulated devices), checkpoint (save and restore with and without the
checksums), population (P single runs vs a population of P on Table 1's rows).
A run of only some parts replaces their sections of an existing results file
and keeps the others. Timings are interleaved side by side and reported
as medians and ratios; the machine's load is recorded with them.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
import types

import jax
from absl import app, flags

from bigbatch_jax.training.host_memory import retain_freed_host_memory
from experiments.benchmarks import (
  checkpoint,
  compile_memory,
  normalizers,
  overheads,
  pipeline,
  population,
  report,
  scaling,
  throughput,
  timing,
)

PARTS = {
  "step": throughput,
  "overheads": overheads,
  "normalizers": normalizers,
  "pipeline": pipeline,
  "compile_memory": compile_memory,
  "scaling": scaling,
  "checkpoint": checkpoint,
  "population": population,
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


_PARTS = flags.DEFINE_list("parts", list(PARTS), f"parts to run, of {list(PARTS)}")
flags.DEFINE_bool("quick", False, "smaller sizes")
flags.DEFINE_integer("batch", None, "global batch (4096; --quick 1024)")
flags.DEFINE_integer("hidden", 512, "F1's width (512 in the paper)")
flags.DEFINE_integer("rounds", None, "interleaved timing rounds")
flags.DEFINE_integer("peak_size", None, "N of the N x N jnp.dot peak probe")
flags.DEFINE_integer("epoch_steps", None, "steps of a pipeline/compile epoch")
flags.DEFINE_integer("epoch_repeats", None, "alternating (epoch, pure) repeats")
flags.DEFINE_list("memory_batches", None, "batches of the memory table, e.g. 1024,4096")
flags.DEFINE_list("devices", ["1", "2", "4"], "simulated device counts of the scaling table")
flags.DEFINE_integer(
  "inner",
  None,
  "calls per timing, averaged (1 on the CPU; 50 on an accelerator, whose steps are short "
  "enough for dispatch to matter)",
)
flags.DEFINE_integer(
  "profile", None, "profile the GBN step (CPU): 0 or 1", lower_bound=0, upper_bound=1
)
flags.DEFINE_integer("profile_steps", 3, "steps of the profile")
flags.DEFINE_string("output", RESULTS, "the markdown results file")
FLAGS = flags.FLAGS


def options() -> types.SimpleNamespace:
  """The flags as the parts read them (``args.batch``, ...), the preset filling unset sizes."""
  args = types.SimpleNamespace(
    **{name: FLAGS[name].value for name in (*FULL, "hidden", "inner", "profile_steps", "output")}
  )
  defaults = QUICK if FLAGS.quick else FULL
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  args.memory_batches = [int(b) for b in args.memory_batches]
  args.devices = [int(d) for d in FLAGS.devices]
  args.parts = [p.strip() for p in _PARTS.value if p.strip()]
  unknown = sorted(set(args.parts) - set(PARTS))
  if unknown:
    raise app.UsageError(f"unknown parts {unknown}; valid: {list(PARTS)}")
  return args


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  args = options()
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
  command = "python -m experiments.benchmarks " + shlex.join(sys.argv[1:])
  preface = (
    "The machine is shared: absolute times move with its load (recorded below), so "
    "every comparison is a ratio of candidates timed interleaved in the same rounds. "
    "See the README's performance section for what the numbers mean."
  )
  if set(args.parts) != set(PARTS) and os.path.exists(args.output):
    report.update_markdown(args.output, command.strip(), machine, sections)
  else:
    report.write_markdown(args.output, command.strip(), machine, sections, preface)
  print(f"\nwrote {args.output}")


if __name__ == "__main__":
  app.run(main)
