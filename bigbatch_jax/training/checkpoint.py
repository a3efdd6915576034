"""Checkpoints of the whole training state with orbax-checkpoint.

The state holds everything an exact resume needs: parameters, batch
statistics, optimizer state (with its noise key), w0, the run key and the
step. The data position is a pure function of the step (the example stream of
``bigbatch_jax.data`` is indexed by position), so no iterator state is saved.
Typed JAX keys are stored as their raw key data and re-wrapped on restore.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from bigbatch_jax.training import checkpoint_digest


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_saveable(tree: Any) -> Any:
  """Replaces typed keys by their uint32 key data (orbax stores plain arrays)."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def from_saveable(saved: Any, like: Any) -> Any:
  """Re-wraps the key data of ``saved`` as typed keys where ``like`` has keys."""
  return jax.tree.map(
    lambda s, ref: (
      jax.random.wrap_key_data(s, impl=jax.random.key_impl(ref)) if _is_key(ref) else s
    ),
    saved,
    like,
  )


log = logging.getLogger(__name__)

# Where unreadable checkpoints are moved: ``DIRECTORY_set_aside/STEP``.
SET_ASIDE_SUFFIX = "_set_aside"


class CheckpointWriteError(OSError):
  """Writing a checkpoint failed (no space, no permission, an I/O error)."""


class Checkpointer:
  """Atomic, checksummed checkpoints of a pytree in ``directory``; keeps the newest few.

  Writes are synchronous: a failed write raises :class:`CheckpointWriteError`
  in the call that asked for it, and leaves no orbax thread waiting for a
  write that will never finish (an asynchronous write that fails leaves such
  threads, and the interpreter then never exits). Every checkpoint's arrays
  are digested (``checkpoint_digest``) before the write; a restore checks
  them. Each step directory is read on its own, so a broken one cannot make
  the others unreadable.

  Args:
    directory: where the step directories are written.
    max_to_keep: the newest checkpoints kept.
    checksums: record digests at save and check them at restore (off only to
      measure their cost: experiments/benchmarks, part ``checkpoint``).
  """

  def __init__(self, directory: str, max_to_keep: int = 2, checksums: bool = True):
    self.directory = os.path.abspath(directory)
    self.max_to_keep = max_to_keep
    self.checksums = checksums
    self._manager_instance = None

  @property
  def _manager(self) -> ocp.CheckpointManager:
    # Made on the first write, after restore_latest_good set broken steps aside.
    if self._manager_instance is None:
      try:
        self._manager_instance = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
            max_to_keep=self.max_to_keep, create=True, enable_async_checkpointing=False
          ),
        )
      except OSError as error:
        raise CheckpointWriteError(
          f"cannot create the checkpoint directory {self.directory}: {error}"
        ) from error
    return self._manager_instance

  def all_steps(self) -> list[int]:
    """The steps with a checkpoint directory (finished writes only: orbax renames them last)."""
    if not os.path.isdir(self.directory):
      return []
    names = os.listdir(self.directory)
    return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(self._path(int(n))))

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def _path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: Any) -> None:
    """Writes ``state`` as checkpoint ``step``, its digests first; returns once it is on disk.

    Raises:
      CheckpointWriteError: naming the directory and the cause, when the write fails.
    """
    saveable = to_saveable(state)
    digests = checkpoint_digest.array_digests(saveable) if self.checksums else None
    try:
      if digests is not None and jax.process_index() == 0:
        checkpoint_digest.write_digests(self.directory, step, digests)
      self._manager.save(step, args=ocp.args.StandardSave(saveable))
      self._manager.wait_until_finished()
      if jax.process_index() == 0:
        checkpoint_digest.remove_digests_except(self.directory, self.all_steps())
    except CheckpointWriteError:
      raise
    except Exception as error:
      last = [s for s in self.all_steps() if s != step]
      kept = f"checkpoint {last[-1]} is the last one written" if last else "no checkpoint is kept"
      raise CheckpointWriteError(
        f"writing checkpoint {step} to {self.directory} failed: {type(error).__name__}: "
        f"{_first_line(error)}. Free space or fix the directory's permissions, then rerun "
        f"the same command ({kept})"
      ) from error

  def restore(self, like: Any, step: int | None = None) -> Any:
    """Restores checkpoint ``step`` (latest if None) shaped and sharded like ``like``.

    Raises:
      checkpoint_digest.CorruptCheckpoint: when its arrays differ from their digests.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    target = to_saveable(like)
    path = os.path.join(self._path(step), "default")
    if not os.path.isdir(path):
      raise FileNotFoundError(f"checkpoint {step} in {self.directory} has no {path}")
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
      restored = checkpointer.restore(path, args=ocp.args.StandardRestore(target))
    if self.checksums:
      checkpoint_digest.verify(self.directory, step, restored)
    return from_saveable(restored, like)

  def restore_latest_good(self, like: Any) -> tuple[Any, int | None]:
    """Restores the newest checkpoint that reads back and matches its digests.

    A checkpoint that fails (damaged files, an empty or half-copied step
    directory, a digest mismatch) is reported, set aside (renamed into
    ``DIRECTORY_set_aside``, never deleted) and the previous one is tried.

    Args:
      like: a state of the right structure and shardings.

    Returns:
      (state, step), or (like, None) when there is no checkpoint.

    Raises:
      RuntimeError: when there are checkpoints and none of them is good.
    """
    failures = []
    for step in reversed(self.all_steps()):
      try:
        state = self.restore(like, step)
      except Exception as error:
        log.debug("checkpoint %d: %r", step, error)
        failures.append((step, f"{type(error).__name__}: {_first_line(error)}"))
        _say(f"checkpoint {step} in {self.directory} is unreadable ({failures[-1][1]})")
        continue
      # Only once a good one is found: an error of the restore itself (not of the
      # files) fails every checkpoint, and then none is moved.
      for bad, _ in failures:
        where = self._set_aside(bad) if jax.process_index() == 0 else "the side"
        _say(f"checkpoint {bad} was moved to {where}; resuming from checkpoint {step}")
      self._remove_beyond_max_to_keep()
      return state, step
    if failures:
      tried = "; ".join(f"{step}: {reason}" for step, reason in failures)
      raise RuntimeError(
        f"no checkpoint in {self.directory} could be restored ({tried}). Put a good copy of "
        "a checkpoint back, or start the run afresh in a new --workdir"
      )
    return like, None

  def _remove_beyond_max_to_keep(self) -> None:
    """Deletes the oldest checkpoints over ``max_to_keep``, as the next write would.

    A process killed after a write and before orbax deleted the oldest leaves
    one too many; a run resumed at its last step writes nothing more.
    """
    if jax.process_index() != 0:
      return
    for step in self.all_steps()[: -self.max_to_keep]:
      log.info("deleting checkpoint %d, over max_to_keep=%d", step, self.max_to_keep)
      shutil.rmtree(self._path(step))
    checkpoint_digest.remove_digests_except(self.directory, self.all_steps())

  def _set_aside(self, step: int) -> str:
    """Moves checkpoint ``step`` (and its digests) out of the directory; returns where to."""
    target_dir = self.directory + SET_ASIDE_SUFFIX
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, str(step))
    n = 1
    while os.path.exists(target):
      target = os.path.join(target_dir, f"{step}.{n}")
      n += 1
    os.replace(self._path(step), target)
    digests = checkpoint_digest.digest_path(self.directory, step)
    if os.path.exists(digests):
      os.replace(digests, os.path.join(target, "digests.json"))
    if self._manager_instance is not None:
      self._manager_instance.reload()
    return target

  def restore_raw(self, step: int | None = None) -> dict:
    """Restores checkpoint ``step`` (latest if None) as saved: nested dicts of arrays.

    For reading finished runs (diagnostics, tests) without building the model
    and optimizer first; typed keys come back as their key data. Verified
    against its digests when they were recorded.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    # Host numpy arrays shaped by the checkpoint's own metadata: readable on
    # any device topology (a multi-host run's checkpoint on one CPU, say).
    path = os.path.join(self._path(step), "default")
    checkpointer = ocp.PyTreeCheckpointer()
    # The item's own metadata, from its handler: the checkpointer's metadata()
    # also looks for step metadata inside the item directory, which the
    # manager writes one level up, and warns for every restore that it is not there.
    metadata = ocp.PyTreeCheckpointHandler().metadata(pathlib.Path(path))
    tree = getattr(metadata, "tree", metadata)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    if self.checksums and os.path.exists(checkpoint_digest.digest_path(self.directory, step)):
      checkpoint_digest.verify(self.directory, step, restored)
    return restored

  def wait(self) -> None:
    """Blocks until pending writes are on disk (writes are synchronous: returns at once)."""
    if self._manager_instance is not None:
      self._manager_instance.wait_until_finished()

  def close(self) -> None:
    if self._manager_instance is not None:
      self._manager_instance.close()


def _say(message: str) -> None:
  log.warning(message)
  print(f"WARNING: {message}", flush=True)


def _first_line(error: BaseException, limit: int = 300) -> str:
  """The first non-empty line of ``error``'s message, cut at ``limit`` characters."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  text = lines[0] if lines else repr(error)
  return text if len(text) <= limit else text[: limit - 3] + "..."
