"""Keeping XLA's per-call host buffers mapped between train steps on the CPU backend.

Each call of a compiled step on the CPU backend allocates its temporary
buffers (at F1 batch 4096, ~160 MiB of activations and gradients) with the C
library's ``malloc`` and frees them when the call returns. glibc gives blocks
of that size back to the operating system (``mmap``/``munmap``, and
per-thread arenas that shrink on ``free``), so the next call touches fresh
pages: ~40,000 page faults per step, each zeroing 4 KiB, which made the step
~30% slower on a 2-core machine (experiments/benchmarks/RESULTS.md, 'Host
memory', has the rows with and without this). Several updates per call
(``steps_per_call``) amortize it; this removes it.

:func:`retain_freed_host_memory` tells glibc to keep freed memory: one arena
for all threads, no ``mmap`` for large blocks, and no trimming below 2 GiB.
The process's resident memory then stays at its peak, as a GPU allocator's
pool does. It must run before JAX starts its backend (the first computation
or ``jax.devices()``): threads XLA has already started keep their own arenas.
The launch scripts call it first thing; it does nothing on other C libraries.

Measured per call with a 64 MiB temporary (tests/test_host_memory.py), it
takes the faults from about 16 400 to 0: on every call after the second with
jax 0.10.2; with jax 0.12.0.1 one or two of the first five calls still fault
it in, the later ones do not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

from absl import logging

from bigbatch_jax import _compat

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# mallopt takes an int: the largest trim threshold it accepts.
_MAX_TRIM_THRESHOLD = 2**31 - 1


def _backends_started() -> bool:
  return _compat.backends_are_initialized()


def retain_freed_host_memory() -> bool:
  """Makes glibc keep freed host memory for reuse instead of returning it to the OS.

  Returns:
    True if the settings were applied; False on a C library other than glibc
    (nothing to do there) or if ``mallopt`` refused one of them.
  """
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    logging.info("retain_freed_host_memory: not glibc (%s); nothing changed", platform.libc_ver())
    return False
  if _backends_started():
    logging.warning(
      "retain_freed_host_memory was called after JAX started its backend: threads that XLA "
      "already runs keep their own malloc arenas, so step buffers may still be unmapped and "
      "faulted in again on every call. Call it before the first JAX computation."
    )
  libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  settings = {
    "M_ARENA_MAX": (_M_ARENA_MAX, 1),
    "M_MMAP_MAX": (_M_MMAP_MAX, 0),
    "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, _MAX_TRIM_THRESHOLD),
  }
  refused = [name for name, (param, value) in settings.items() if libc.mallopt(param, value) != 1]
  if refused:
    logging.warning("retain_freed_host_memory: mallopt refused %s", refused)
    return False
  return True
