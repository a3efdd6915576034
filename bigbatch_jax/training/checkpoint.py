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
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


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


class Checkpointer:
  """Periodic, atomic checkpoints of a pytree in ``directory``; keeps the newest few."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Starts writing ``state`` as checkpoint ``step`` (finishes in the background)."""
    self._manager.save(step, args=ocp.args.StandardSave(to_saveable(state)))

  def restore(self, like: Any, step: int | None = None) -> Any:
    """Restores checkpoint ``step`` (latest if None) shaped and sharded like ``like``."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(to_saveable(like)))
    return from_saveable(restored, like)

  def restore_latest_good(self, like: Any) -> tuple[Any, int | None]:
    """Restores the newest checkpoint that reads back; drops unreadable newer ones.

    A checkpoint whose files were damaged after it was written (a crash of the
    file system, a truncated copy) fails to restore; it is reported, deleted so
    that the step can be written again, and the previous one is tried. Writes
    themselves are atomic (orbax renames a finished temporary directory), so a
    write killed half-way leaves no checkpoint behind to confuse this.

    Args:
      like: a state of the right structure and shardings.

    Returns:
      (state, step), or (like, None) when there is no checkpoint.
    """
    failures = []
    for step in reversed(self.all_steps()):
      try:
        state = self.restore(like, step)
      except Exception as error:
        message = f"checkpoint {step} in {self.directory} is unreadable ({type(error).__name__}: "
        message += f"{str(error)[:200]}); falling back to the previous one"
        log.warning(message)
        print(f"WARNING: {message}", flush=True)
        failures.append(step)
        continue
      for bad in failures:
        self._delete(bad)
      return state, step
    if failures:
      raise RuntimeError(
        f"no checkpoint in {self.directory} could be restored (tried steps {failures}); "
        "move the directory away to start the run afresh"
      )
    return like, None

  def _delete(self, step: int) -> None:
    try:
      self._manager.delete(step)
    except Exception:
      shutil.rmtree(os.path.join(self.directory, str(step)), ignore_errors=True)
    self._manager.reload()

  def restore_raw(self, step: int | None = None) -> dict:
    """Restores checkpoint ``step`` (latest if None) as saved: nested dicts of arrays.

    For reading finished runs (diagnostics, tests) without building the model
    and optimizer first; typed keys come back as their key data.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    # Host numpy arrays shaped by the checkpoint's own metadata: readable on
    # any device topology (a multi-host run's checkpoint on one CPU, say).
    path = os.path.join(self.directory, str(step), "default")
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(path)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))

  def wait(self) -> None:
    """Blocks until pending writes are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
