"""The private flax and jax names bigbatch_jax uses, in one place.

Each is used because no public API does the same job (say why at the use).
``tests/test_compat.py`` checks every name and signature listed in
``PRIVATE_NAMES``, so that a flax or jax release that moves or changes one
fails there with the name, instead of deep inside a training run.
"""

from __future__ import annotations

from typing import Any

# flax's batch-norm statistics (float32 reductions, masks, cross-device mean in
# one pmean): GhostBatchNorm with ghost_batch_size=None must be nn.BatchNorm and
# nnx.BatchNorm to the bit, so it calls the very function they call.
from flax.linen.normalization import _compute_stats as compute_stats

# Whether JAX has started its backends (host_memory warns when called too late).
from jax._src import xla_bridge as _xla_bridge

# (module, name, keyword arguments the callers pass): what tests/test_compat.py checks.
PRIVATE_NAMES = (
  (
    "flax.linen.normalization",
    "_compute_stats",
    (
      "axes",
      "dtype",
      "axis_name",
      "axis_index_groups",
      "use_fast_variance",
      "mask",
      "force_float32_reductions",
    ),
  ),
  ("jax._src.xla_bridge", "backends_are_initialized", ()),
  ("jax._src.distributed", "global_state", ()),
)


def backends_are_initialized() -> bool:
  """True once JAX has created its backends (the first computation or device query)."""
  return _xla_bridge.backends_are_initialized()


def distributed_client() -> Any:
  """The coordination-service client ``jax.distributed.initialize`` created.

  jax has no public barrier without a device collective; the client's
  ``wait_at_barrier`` is one.
  """
  from jax._src import distributed

  return distributed.global_state.client


def preemption_sync_manager_running() -> bool:
  """Whether ``jax.distributed.initialize`` started the preemption sync manager.

  jax exposes ``multihost_utils.reached_preemption_sync_point`` but not
  whether the manager behind it runs (it can be turned off at initialization).
  """
  from jax._src import distributed

  return distributed.global_state.preemption_sync_manager is not None


__all__ = [
  "PRIVATE_NAMES",
  "backends_are_initialized",
  "compute_stats",
  "distributed_client",
  "preemption_sync_manager_running",
]
