"""Checksums of checkpoints: a SHA-256 digest per array, recorded at save, checked at restore.

The digests are taken from the arrays in memory, before orbax writes them, and
written (atomically: ``json_files``) to ``DIRECTORY/digests/STEP.json``
before the checkpoint's own directory exists. A checkpoint that reads back
with different bytes in any array (a flipped bit on disk, a torn copy) is
therefore found, named by its step and the array's path in the state.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from bigbatch_jax.training.json_files import read_json, write_json_atomic

DIGEST_DIR = "digests"
ALGORITHM = "sha256"


class CorruptCheckpoint(RuntimeError):
  """A checkpoint whose arrays or digest record do not match."""


def _host_array(x: Any) -> np.ndarray:
  """``x`` as one host array (every process gets the whole value)."""
  if isinstance(x, jax.Array):
    if x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def array_digests(tree: Any) -> dict[str, str]:
  """``{path in the tree: sha256 of dtype, shape and bytes}`` for every leaf of ``tree``.

  A path is the leaf's keys joined by ``/`` (``opt_state/1/0/trace/fc1/kernel``).
  """
  digests = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    value = np.ascontiguousarray(_host_array(leaf))
    h = hashlib.sha256(f"{value.dtype.str}{value.shape}".encode())
    h.update(value.reshape(-1).view(np.uint8))
    digests[_path_name(path)] = h.hexdigest()
  return digests


def _path_name(path) -> str:
  """``params/fc1/kernel``: the same for a state and for its restore as nested dicts."""
  parts = []
  for entry in path:
    for attribute in ("name", "key", "idx"):
      if hasattr(entry, attribute):
        parts.append(str(getattr(entry, attribute)))
        break
    else:
      parts.append(str(entry))
  return "/".join(parts)


def digest_path(directory: str, step: int) -> str:
  return os.path.join(directory, DIGEST_DIR, f"{step}.json")


def write_digests(directory: str, step: int, digests: dict[str, str]) -> None:
  """Records ``digests`` of checkpoint ``step`` in ``directory`` (atomically)."""
  os.makedirs(os.path.join(directory, DIGEST_DIR), exist_ok=True)
  write_json_atomic(
    digest_path(directory, step), {"algorithm": ALGORITHM, "arrays": digests}, indent=1
  )


def read_digests(directory: str, step: int) -> dict[str, str]:
  """The digests recorded for checkpoint ``step``; ``CorruptCheckpoint`` when none can be read."""
  path = digest_path(directory, step)
  if not os.path.exists(path):
    raise CorruptCheckpoint(
      f"checkpoint {step} in {directory} has no digest record ({path}): it cannot be verified"
    )
  try:
    record = read_json(path)
    if record["algorithm"] != ALGORITHM:
      raise ValueError(f"unknown algorithm {record['algorithm']!r}")
    return dict(record["arrays"])
  except (ValueError, KeyError, TypeError) as error:
    raise CorruptCheckpoint(
      f"checkpoint {step} in {directory}: its digest record {path} is unreadable ({error})"
    ) from error


def verify(directory: str, step: int, restored: Any) -> None:
  """Raises ``CorruptCheckpoint`` naming the step and the arrays that differ from their digests."""
  recorded = read_digests(directory, step)
  found = array_digests(restored)
  bad = sorted(k for k in set(recorded) | set(found) if recorded.get(k) != found.get(k))
  if bad:
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise CorruptCheckpoint(
      f"checkpoint {step} in {directory} does not match its digests: {shown} "
      f"(in {os.path.join(directory, str(step))})"
    )


def remove_digests_except(directory: str, steps: list[int]) -> None:
  """Deletes the digest records of checkpoints no longer in ``directory`` (kept: ``steps``)."""
  folder = os.path.join(directory, DIGEST_DIR)
  if not os.path.isdir(folder):
    return
  for name in os.listdir(folder):
    stem = name.removesuffix(".json")
    if stem.isdigit() and int(stem) not in steps:
      os.remove(os.path.join(folder, name))
