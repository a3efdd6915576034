"""Multi-host runs: jax.distributed start-up, and a barrier between processes."""

from __future__ import annotations

import itertools

import jax


def maybe_initialize_distributed(settings) -> None:
  """jax.distributed.initialize() for multi-host runs, with timeouts so a dead peer fails fast.

  ``settings``: the run's :class:`~bigbatch_jax.training.spec.RunSettings`.
  On CPU the cross-process collectives use gloo. Unset coordinator address,
  process count and id come from the cluster environment.
  """
  if not settings.distributed or jax.distributed.is_initialized():
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used by CPU devices only
  timeout = int(settings.distributed_timeout_s)
  jax.distributed.initialize(
    coordinator_address=settings.coordinator_address,
    num_processes=settings.num_processes,
    process_id=settings.process_id,
    initialization_timeout=timeout,
    heartbeat_timeout_seconds=timeout,
  )


def wait_for_all_processes(name: str, timeout_s: int) -> None:
  """A barrier on jax.distributed's coordination service, which has no device collective.

  The first cross-process collective (orbax's directory sync) sets up gloo's
  context with a fixed 30 s wait for the peers; a process still loading data
  or compiling on a loaded machine can miss it. Meeting here first, under the
  run's own ``distributed_timeout_s``, puts every process at that collective
  together.
  """
  if jax.process_count() == 1:
    return
  from bigbatch_jax._compat import distributed_client

  # A barrier id is spent once passed; every process meets the barriers in the
  # same order, so a call count makes the ids of repeated runs agree and differ.
  calls = next(_barrier_calls)
  distributed_client().wait_at_barrier(f"{name}_{calls}", timeout_in_ms=int(timeout_s) * 1000)


_barrier_calls = itertools.count()
