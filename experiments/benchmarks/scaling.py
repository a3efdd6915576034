"""Part "scaling": the step on 1, 2 and 4 simulated CPU devices.

Each device count runs in its own process with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``. Simulated devices share
this machine's cores, so they add no compute: the rows check the accounting
(examples/s = global batch / step time, the per-device batch) and that the
results are the same whatever the device count (ghost batches stay inside a
device's shard and every device holds whole ghost batches, so the loss and
parameters after the same updates must agree to float tolerance).
"""

from __future__ import annotations

import jax

from experiments.benchmarks.report import Section, Target
from experiments.benchmarks.subprocesses import run_worker


def _description() -> str:
  if jax.default_backend() == "cpu":
    return (
      __doc__.split("\n\n", 1)[1].strip().replace("\n", " ")
      + " These rows are from the CPU; the GPU numbers, where a run had one, are in "
      "experiments/benchmarks/RESULTS_gpu.md."
    )
  device = jax.devices()[0]
  return (
    f"Real devices: {jax.device_count()} x {device.device_kind} ({jax.default_backend()}); "
    "each count runs in its own process on the first N devices; examples/s is the global "
    "batch over the step time."
  )


def run(args) -> list[Section]:
  # One ghost size for every device count (it must divide the smallest shard).
  ghost = min(128, args.batch // max(args.devices))
  results = [
    run_worker(
      [
        "scaling",
        f"--batch={args.batch}",
        f"--devices={n}",
        f"--hidden={args.hidden}",
        f"--ghost={ghost}",
      ],
      devices=n,
    )
    for n in args.devices
  ]
  base = results[0]
  rows, worst = [], 0.0
  for r in results:
    drift = abs(r["params_sum"] - base["params_sum"]) / abs(base["params_sum"])
    worst = max(worst, drift)
    rows.append(
      [
        str(r["devices"]),
        str(r["per_device_batch"]),
        f"{r['step_s'] * 1e3:.1f}",
        f"{r['examples_per_s']:,.0f}",
        f"{r['examples_per_s'] / base['examples_per_s']:.2f}",
        f"{r['loss']:.6f}",
        f"{drift:.1e}",
      ]
    )
  target = Target(
    "relative parameter difference across device counts", worst, "<= 1e-5", worst <= 1e-5
  )
  return [
    Section(
      f"Scaling over {'simulated' if jax.default_backend() == 'cpu' else 'real'} devices "
      f"(batch {args.batch})",
      [
        "devices",
        "per-device batch",
        "step ms",
        "examples/s",
        "vs 1 device",
        f"loss after {base['steps']} steps",
        "param. difference",
      ],
      rows,
      _description(),
      [target],
    )
  ]
