"""Part "compile_memory": compilations over an epoch, compile time, and peak RSS.

Compilations are counted with a ``jax.monitoring`` listener on
``/jax/core/compile/backend_compile_duration`` from the moment the step is
built (``shard_train_step``, then ``compile_train_step`` as
``train_and_evaluate`` does) to the end of an epoch fed by ``BatchIterator``:
the step must compile once and the epoch add nothing.

Peak memory is the peak resident set of a fresh process per (batch,
donation) that builds the step and runs a few updates, since RSS is per
process. It is read as ``VmHWM`` from /proc/self/status: ``ru_maxrss`` of a
forked-and-exec'd child reports the parent's peak when that is larger (Linux
copies it across fork), which made every row read the driver's 1.5 GiB. The
baseline is the process's peak before the step is built (interpreter and
libraries), and XLA's own estimate of the step's buffers (arguments +
outputs - aliased + temporaries) is shown beside it.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from bigbatch_jax import data as data_lib
from bigbatch_jax.training import parallel
from experiments.benchmarks import steps, timing
from experiments.benchmarks.report import Section, Target
from experiments.benchmarks.subprocesses import run_worker


def _compile_section(args) -> Section:
  batch = args.batch
  config = steps.f1_config("lb+lr+gbn", batch)
  built = steps.build_step(config, hidden=args.hidden)  # state initialized before counting
  rng = np.random.default_rng(0)
  num_train = batch * args.epoch_steps
  dataset = data_lib.ArrayDataset(
    "synthetic",
    rng.normal(size=(num_train, steps.INPUT_DIM)).astype(np.float32),
    rng.integers(0, 10, num_train).astype(np.int32),
    np.zeros((1, steps.INPUT_DIM), np.float32),
    np.zeros(1, np.int32),
    10,
  )
  events: list[float] = []

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      events.append(duration)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    start = time.perf_counter()
    compiled = parallel.compile_train_step(
      built.fn, built.state, batch, (steps.INPUT_DIM,), built.mesh
    )
    compile_wall = time.perf_counter() - start
    after_compile = len(events)
    start = time.perf_counter()
    state = built.state
    with data_lib.BatchIterator(dataset, batch, seed=0) as batches:
      for _ in range(args.epoch_steps):
        state, metrics = compiled(state, parallel.put_batch(next(batches), built.mesh))
    timing.block((state, metrics))
    epoch_wall = time.perf_counter() - start
  finally:
    jax.monitoring.clear_event_listeners()
  total = len(events)
  rows = [
    ["compile_train_step (AOT, as train_and_evaluate)", str(after_compile), f"{compile_wall:.2f}"],
    [f"epoch of {args.epoch_steps} steps", str(total - after_compile), f"{epoch_wall:.2f}"],
    ["total", str(total), f"{sum(events):.2f} (XLA backend compile)"],
  ]
  target = Target("train-step compilations over an epoch", total, "== 1", total == 1)
  return Section(
    f"Compilations over an epoch (batch {batch})",
    ["phase", "compilations", "seconds"],
    rows,
    "Counted with a jax.monitoring listener (backend compiles).",
    [target],
  )


def _memory_section(args) -> Section:
  rows = []
  for retain in (False, True):
    for batch in args.memory_batches:
      for donate in (True, False):
        r = run_worker(
          [
            "memory",
            f"--batch={batch}",
            f"--donate={int(donate)}",
            f"--hidden={args.hidden}",
            f"--retain={int(retain)}",
          ]
        )
        rows.append(
          [
            "retained" if retain else "glibc default",
            str(batch),
            "yes" if donate else "no",
            f"{r['peak_rss_mib']:.0f}",
            f"{r['peak_rss_mib'] - r['baseline_mib']:.0f}",
            f"{r['step_bytes'] / 2**20:.0f}",
          ]
        )
  return Section(
    "Peak memory (RSS) by batch size and buffer donation",
    [
      "malloc",
      "batch",
      "donated state",
      "peak RSS MiB",
      "over baseline MiB",
      "XLA step buffers MiB",
    ],
    rows,
    "One fresh process per row (3 updates); peak RSS is VmHWM (see the module docstring "
    "of compile_memory.py for why not ru_maxrss). Donation lets the step write the new state "
    "into the old one's buffers; the state of F1 (parameters, w0, momentum) is ~17 MiB, "
    "so the difference is small next to the activations. 'glibc default' rows show what the "
    "step itself needs; 'retained' rows (retain_freed_host_memory, as the launch scripts) "
    "add what the allocator keeps instead of returning: with one arena and no trimming, "
    "freed blocks that do not fit the next request stay resident, so their peak is higher "
    "and depends on allocation order more than on donation.",
  )


def run(args) -> list[Section]:
  return [_compile_section(args), _memory_section(args)]
