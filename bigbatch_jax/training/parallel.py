"""Data parallelism: a 1-D device mesh, shard_map inside jit, and a pmap twin.

The step functions use explicit ``lax.pmean``/``psum`` over the axis "batch".
They are wrapped with ``check_vma=False``: with varying-manual-axes checks on,
``jax.grad`` of replicated parameters would already sum over devices and an
explicit mean would be wrong under one of shard_map and pmap; with it off, the
same step runs unchanged under both (``jax.pmap`` is jit(shard_map) since JAX
0.8 and keeps these semantics).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import psutil
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bigbatch_jax.training.step import AXIS

MEMBERS = "members"  # the mesh axis a population's members split over (``make_mesh``)


def make_mesh(num_devices: int | None = None, member_devices: int = 1) -> Mesh:
  """The mesh over the first ``num_devices`` devices (all, across processes, if None).

  ``member_devices`` = 1: a 1-D mesh, the batch split over every device.
  ``member_devices`` = k > 1: a population's members split over k groups of
  devices, each group splitting its members' batches (a 2-D mesh, axes
  ``MEMBERS`` x ``AXIS``, k x num_devices / k). Members never interact, so
  the groups exchange nothing: on a CPU of a few cores, each simulated device
  runs its members' small operations on a core of its own.
  """
  devices = jax.devices()
  if num_devices is None:
    num_devices = len(devices)
  if not 1 <= num_devices <= len(devices):
    raise ValueError(
      f"num_devices={num_devices} but {len(devices)} devices are available "
      f"({jax.default_backend()}); use 1..{len(devices)} or None for all"
    )
  if jax.process_count() > 1 and num_devices != len(devices):
    raise ValueError(f"multi-process runs use every device; got num_devices={num_devices}")
  if member_devices == 1:
    return Mesh(np.array(devices[:num_devices]), (AXIS,))
  if member_devices < 1 or num_devices % member_devices:
    raise ValueError(
      f"member_devices={member_devices} does not divide num_devices={num_devices}; "
      f"valid: a divisor of {num_devices}"
    )
  if jax.process_count() > 1:
    raise ValueError(
      f"member_devices={member_devices}: members split over devices in one process only; "
      f"this run has {jax.process_count()} processes (use member_devices=1)"
    )
  grid = np.array(devices[:num_devices]).reshape(member_devices, num_devices // member_devices)
  return Mesh(grid, (MEMBERS, AXIS))


def member_axis(mesh: Mesh) -> str | None:
  """The mesh's axis of population members (``make_mesh``'s ``member_devices`` > 1), or None."""
  return MEMBERS if MEMBERS in mesh.axis_names else None


def data_devices(mesh: Mesh) -> int:
  """The devices one batch is split over: every device, or one group of ``member_devices``."""
  return mesh.shape[AXIS]


def batch_spec(stacked: bool = False, members: bool = False, member_split: str | None = None) -> P:
  """The batch's partition: split along its examples, after the steps and members axes.

  ``stacked``: a leading axis of steps (``train_steps``); ``members``: an
  axis of population members (``population.population_train_step``), after
  the steps'. The steps are replicated; the members split over
  ``member_split`` (``member_axis``; None: replicated).
  """
  lead = [None] * int(stacked) + ([member_split] if members else [])
  return P(*lead, AXIS)


def state_sharding(mesh: Mesh, members: bool = False) -> NamedSharding:
  """A state's sharding: replicated, a population's members split over ``member_axis``."""
  split = member_axis(mesh) if members else None
  return NamedSharding(mesh, P(split) if split else P())


def shard_train_step(
  step_fn: Callable, mesh: Mesh, stacked: bool = False, members: bool = False, **static
) -> Callable:
  """jit(shard_map(step)) with the state replicated, the batch split and the state donated.

  With ``stacked`` the batch has a leading axis of steps (``train_steps``);
  with ``members`` an axis of population members after it; the examples
  axis, after both, is split. A population's step takes a third argument,
  the members' grid values (``population.population_train_step``). On a mesh
  with a ``member_axis`` the population's state, batches, values and
  metrics are split along their members axis; otherwise all replicated.
  """
  fn = functools.partial(step_fn, num_replicas=data_devices(mesh), **static)
  split = member_axis(mesh) if members else None
  # Replicated (P()) fits leaves of any rank; a split names the leading members axis.
  state = P(split) if split else P()
  in_specs = (state, batch_spec(stacked, members, split))
  metrics = P(*[None] * int(stacked), split) if split else P()
  mapped = jax.shard_map(
    fn,
    mesh=mesh,
    in_specs=(*in_specs, state) if members else in_specs,
    out_specs=(state, metrics),
    check_vma=False,
  )
  return jax.jit(mapped, donate_argnums=0)


def shard_eval_step(eval_fn: Callable, mesh: Mesh, members: bool = False, **static) -> Callable:
  """jit(shard_map(eval_step)): the batch split, the sums replicated (a population's per member)."""
  split = P(member_axis(mesh)) if members and member_axis(mesh) else P()
  mapped = jax.shard_map(
    functools.partial(eval_fn, **static),
    mesh=mesh,
    in_specs=(split, P(AXIS)),
    out_specs=split,
    check_vma=False,
  )
  return jax.jit(mapped)


def pmap_train_step(step_fn: Callable, num_devices: int, **static) -> Callable:
  """The same step under ``jax.pmap`` (state stacked per device, batch reshaped)."""
  fn = functools.partial(step_fn, num_replicas=num_devices, **static)
  return jax.pmap(fn, axis_name=AXIS, donate_argnums=0, devices=jax.devices()[:num_devices])


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def put_batch(
  local_batch: dict[str, np.ndarray], mesh: Mesh, stacked: bool = False, members: bool = False
) -> dict[str, jax.Array]:
  """A global batch array from this process's rows (all rows in a single process).

  With ``stacked`` the arrays have a leading axis of steps, with ``members``
  an axis of population members (after the steps').
  """
  sharding = NamedSharding(mesh, batch_spec(stacked, members, member_axis(mesh)))
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }


def step_memory_bytes(compiled) -> int:
  """Peak bytes per device of a compiled step: arguments, outputs, temporaries."""
  stats = compiled.memory_analysis()
  if stats is None:
    return 0
  return (
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    - stats.alias_size_in_bytes
    + stats.temp_size_in_bytes
  )


def available_memory_bytes(mesh: Mesh) -> int:
  """Free memory per device: the accelerator's limit, or host RAM shared by CPU devices."""
  device = mesh.local_devices[0]  # memory_stats needs a device of this process
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "bytes_limit" in stats:
    return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
  return psutil.virtual_memory().available // max(1, len(jax.local_devices()))


def compile_train_step(
  train_fn,
  state,
  batch_size: int,
  input_shape,
  mesh: Mesh,
  steps: int | None = None,
  members: int | None = None,
  hyperparameters: dict | None = None,
  *,
  check_memory: bool = True,
):
  """Compiles the step ahead of time and checks that it fits in memory.

  Returns the compiled step (called like ``train_fn``; one compilation per
  batch size and call length; ``steps`` is the leading axis of a stacked
  batch, ``members`` the population's axis after it, ``hyperparameters``
  a population's grid values, the step's third argument). Raises ``MemoryError``
  naming the batch, the population and the sizes when the step needs more
  memory per device than is free (``check_memory``: False skips the check;
  ``state`` may then be abstract, ``jax.ShapeDtypeStruct`` leaves).
  """
  split = member_axis(mesh)
  sharding = NamedSharding(mesh, batch_spec(steps is not None, members is not None, split))
  lead = tuple(n for n in (steps, members) if n is not None)
  batch = {
    "x": jax.ShapeDtypeStruct((*lead, batch_size, *input_shape), jnp.float32, sharding=sharding),
    "y": jax.ShapeDtypeStruct((*lead, batch_size), jnp.int32, sharding=sharding),
  }
  extra = () if members is None else (hyperparameters or {},)
  compiled = train_fn.lower(state, batch, *extra).compile()
  if not check_memory:
    return compiled
  needed, free = step_memory_bytes(compiled), available_memory_bytes(mesh)
  if needed > free:
    gib = 2.0**30
    population = "" if members is None else f" of a population of {members} members"
    raise MemoryError(
      f"the train step{population} at batch_size={batch_size} "
      f"({batch_size // data_devices(mesh)} per device on "
      f"{mesh.size} {mesh.devices.flat[0].platform} device(s)) needs {needed / gib:.2f} GiB per "
      f"device but {free / gib:.2f} GiB is free; use a smaller --config.batch_size or more devices"
    )
  return compiled
