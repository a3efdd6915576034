"""Where a compiled step spends its time: per-op busy time from a jax.profiler trace.

The XLA CPU runtime records one trace event per executed op (a "thunk",
named after its HLO instruction). Joining the events with the op names
that the compiled HLO's metadata gives each instruction attributes every
millisecond to the dots, the normalization layers, the rest of the model
(bias adds, ReLU, loss) or what runs outside the model (optimizer chain,
weight distances, metrics).
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile

import jax

from experiments.benchmarks import timing

CATEGORIES = (
  "dots (dot_general)",
  "normalization (bn*/ layers)",
  "rest of the model (bias, ReLU, loss)",
  "outside the model (optimizer, distances, metrics)",
  "unattributed (runtime)",
)


def hlo_op_names(compiled_text: str) -> dict[str, tuple[str, str]]:
  """Instruction name -> (shape, JAX op_name) from compiled HLO text."""
  pattern = r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) .*?metadata=\{op_name=\"([^\"]*)\""
  return {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(pattern, compiled_text, re.M)}


def categorize(op_name: str) -> str:
  if "dot_general" in op_name:
    return CATEGORIES[0]
  if re.search(r"/bn\d", op_name):
    return CATEGORIES[1]
  if "jvp(" in op_name:
    return CATEGORIES[2]
  return CATEGORIES[3]


def profile_step(run, compiled_text: str, steps: int = 3) -> dict:
  """Per-category and per-op busy milliseconds per step of ``run``.

  Args:
    run: zero-argument callable doing one step (already compiled and warm).
    compiled_text: ``compiled.as_text()`` of the step, to name the ops.
    steps: steps traced (the result is per step).

  Returns:
    A dict: ``wall_ms`` (traced wall time per step), ``categories`` (category
    -> busy ms per step) and ``top_ops`` (list of (ms, instruction, shape,
    op_name), the slowest first).
  """
  names = hlo_op_names(compiled_text)
  timing.block(run())
  with tempfile.TemporaryDirectory() as logdir:
    jax.profiler.start_trace(logdir)
    import time

    start = time.perf_counter()
    for _ in range(steps):
      timing.block(run())
    wall = (time.perf_counter() - start) / steps
    jax.profiler.stop_trace()
    path = sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1]
    data = jax.profiler.ProfileData.from_file(path)
    busy: collections.Counter = collections.Counter()
    for plane in data.planes:
      for line in plane.lines:
        for event in line.events:
          if event.name in names:
            busy[event.name] += event.duration_ns
  categories = {c: 0.0 for c in CATEGORIES}
  for name, ns in busy.items():
    categories[categorize(names[name][1])] += ns / steps / 1e6
  attributed = sum(categories.values())
  categories[CATEGORIES[4]] = max(0.0, wall * 1e3 - attributed)
  top = sorted(((ns / steps / 1e6, name, *names[name]) for name, ns in busy.items()), reverse=True)
  return {"wall_ms": wall * 1e3, "categories": categories, "top_ops": top}


def op_kind_summary(top_ops, limit_ms: float = 0.0) -> dict[str, tuple[int, float]]:
  """Groups non-dot ops by what they compute (the op_name's last part): count and ms."""
  groups: dict[str, list[float]] = collections.defaultdict(list)
  for ms, _, shape, op_name in top_ops:
    if "dot_general" in op_name or ms < limit_ms:
      continue
    layer = re.search(r"/(bn|fc)\d", op_name)
    where = "norm" if layer and layer.group(1) == "bn" else "model" if "jvp(" in op_name else "rest"
    what = op_name.rsplit("/", 1)[-1]
    direction = "bwd" if "transpose(" in op_name else "fwd"
    groups[f"{where} {direction} {what} {shape.split('{')[0]}"].append(ms)
  return {k: (len(v), sum(v)) for k, v in sorted(groups.items(), key=lambda kv: -sum(kv[1]))}
