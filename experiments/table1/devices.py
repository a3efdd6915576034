"""Which devices the table's runs train on: on a CPU, a population's members split over cores.

Measured on a 2-core machine (``experiments/benchmarks/RESULTS.md``,
``docs/populations.md``): the small-batch step gains nothing from XLA's
threads, while a second simulated CPU device runs its own stream of work on
the second core. Ten SB members split over two devices trained 1.76x faster
per update than ten single runs, and 1.6x faster than the same population
on one device; single runs split data-parallel over simulated devices were
slower than on one. So the driver simulates one CPU device per core and
gives every run one device per group of members: a population of P over the
largest divisor of P that is not above the devices, a single run one device.
"""

from __future__ import annotations

import os

import jax
import ml_collections

FORCED_COUNT_FLAG = "xla_force_host_platform_device_count"
# The drivers' --cpu_devices flag (experiments.table1, experiments.sweep).
CPU_DEVICES_HELP = (
  "On the CPU: simulated devices, a population's members split over them (one device per "
  "group of members; single runs train on one; experiments/table1/devices.py). Default: one "
  "per usable core. 1: every run on the configs' own devices."
)


def usable_cores() -> int:
  """The cores this process may run on (its affinity, as ``taskset`` sets it)."""
  return len(os.sched_getaffinity(0))


def simulate_cpu_devices(count: int | None) -> int:
  """Asks JAX for ``count`` CPU devices; returns the devices populations may split over.

  ``count`` None: one per usable core. Must run before JAX's first
  computation. An ``XLA_FLAGS`` that already sets the CPU device count is
  the caller's choice and stands. Off the CPU (a GPU or TPU backend)
  populations do not split: returns 1.
  """
  count = usable_cores() if count is None else count
  if count < 1:
    raise ValueError(f"--cpu_devices={count}: expected a positive number of CPU devices")
  if FORCED_COUNT_FLAG not in os.environ.get("XLA_FLAGS", ""):
    jax.config.update("jax_num_cpu_devices", count)
  if jax.default_backend() != "cpu":
    return 1
  return min(count, jax.device_count())


def member_groups(population_size: int, devices: int) -> int:
  """The largest number of groups, at most ``devices``, that splits the members evenly."""
  return max(k for k in range(1, min(devices, population_size) + 1) if population_size % k == 0)


def placed(
  config: ml_collections.ConfigDict, population_size: int, devices: int
) -> ml_collections.ConfigDict:
  """``config`` with its devices set for a run of ``population_size`` members (a copy).

  With ``devices`` > 1 the run gets one device per group of members
  (``member_groups``): ``num_devices`` = ``member_devices`` = the groups, so
  each group trains on one device as a single run does (``num_devices`` 1).
  With ``devices`` = 1 the config is returned as it is.

  Raises:
    ValueError: ``devices`` > 1 and the config already sets ``num_devices``
      or ``member_devices``, which the driver would override.
  """
  if devices == 1:
    return config
  if config.num_devices is not None or config.member_devices != 1:
    raise ValueError(
      f"config.num_devices={config.num_devices}, config.member_devices={config.member_devices}: "
      f"the driver places its runs on {devices} CPU devices itself (one per group of a "
      "population's members); leave both unset, or pass --cpu_devices=1 to place them yourself"
    )
  groups = member_groups(population_size, devices)
  config = config.copy_and_resolve_references()
  config.num_devices = groups
  config.member_devices = groups
  return config
