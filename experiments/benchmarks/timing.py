"""Timing on a shared, noisy CPU: warm-up, blocking, interleaved rounds, medians and ratios.

Two timings taken minutes apart on a machine shared with other jobs can differ
by 3x, so every comparison here is made side by side: each round times every
candidate once, in a rotated order, and a ratio is the median over rounds of
the per-round ratio (noise that hits a round hits both sides of it).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np


def block(tree) -> None:
  """Waits for every array of ``tree`` (a step's outputs) to be computed."""
  jax.block_until_ready(tree)


@dataclasses.dataclass
class Timings:
  """Per-round seconds of each candidate, measured interleaved."""

  seconds: dict[str, list[float]]

  def median(self, name: str) -> float:
    return statistics.median(self.seconds[name])

  def spread(self, name: str) -> tuple[float, float]:
    """The 25th and 75th percentiles of a candidate's seconds."""
    q = np.percentile(self.seconds[name], [25, 75])
    return float(q[0]), float(q[1])

  def ratio(self, name: str, reference: str) -> float:
    """Median over rounds of time(name) / time(reference) in the same round."""
    return statistics.median(
      a / b for a, b in zip(self.seconds[name], self.seconds[reference], strict=True)
    )

  def ratio_spread(self, name: str, reference: str) -> tuple[float, float]:
    ratios = [a / b for a, b in zip(self.seconds[name], self.seconds[reference], strict=True)]
    q = np.percentile(ratios, [25, 75])
    return float(q[0]), float(q[1])


def interleaved(
  candidates: dict[str, Callable[[], object]], rounds: int, warmup: int = 2, inner: int = 1
) -> Timings:
  """Times each zero-argument callable once per round, rotating the order.

  Args:
    candidates: name -> callable that runs the work and returns its outputs
      (blocked on before the clock stops).
    rounds: rounds to time (the statistic is over rounds).
    warmup: untimed calls of each candidate first (compilation, caches).
    inner: calls per timing; the recorded time is their mean.

  Returns:
    The :class:`Timings`.
  """
  names = list(candidates)
  for name in names:
    for _ in range(warmup):
      block(candidates[name]())
  seconds: dict[str, list[float]] = {name: [] for name in names}
  for r in range(rounds):
    shift = r % len(names)
    for name in names[shift:] + names[:shift]:
      fn = candidates[name]
      start = time.perf_counter()
      for _ in range(inner):
        out = fn()
      block(out)
      seconds[name].append((time.perf_counter() - start) / inner)
  return Timings(seconds)


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (or the platform's description)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def load_average() -> str:
  try:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
  except OSError:
    return "n/a"


def machine_info() -> dict[str, str]:
  """What the numbers depend on: versions, CPU, cores, devices, load."""
  import flax
  import optax

  device = jax.devices()[0]
  return {
    "jax": jax.__version__,
    "jaxlib": getattr(jax.lib, "__version__", None) or jax.__version__,
    "flax": flax.__version__,
    "optax": optax.__version__,
    "backend": jax.default_backend(),
    "device": getattr(device, "device_kind", str(device)),
    "cpu": cpu_model(),
    "cores": str(os.cpu_count()),
    "python": platform.python_version(),
    "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
  }


def fmt_ms(seconds: float) -> str:
  return f"{seconds * 1e3:.1f}"


def fmt_ratio(value: float) -> str:
  return f"{value:.3f}"
