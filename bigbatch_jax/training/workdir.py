"""A run's workdir: the saved config, and the check that a resumed run is the same run."""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from bigbatch_jax.training.json_files import read_json, write_json_atomic

# Config keys that may change between a run and its resumption (and that
# differ between the processes of one multi-host run).
RESUMABLE_KEYS = frozenset(
  {
    "progress_bar",
    "log_every_steps",
    "allow_config_change",
    "stop_after_steps",
    "process_id",
    "coordinator_address",
    "distributed_timeout_s",
    # Where the data lives and how far ahead it is read change no result.
    "tfds_data_dir",
    "tfds_download",
    "prefetch_batches",
    # When checkpoints are written and how many are kept change no result.
    "checkpoint_every_steps",
    "max_checkpoints_to_keep",
  }
)

# What shows that a workdir holds (part of) a run.
RUN_FILES = ("checkpoints", "metrics.jsonl", "summary.json")


def config_changes(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """``"key: saved -> current"`` for each result-changing key that differs from ``workdir``'s.

  Empty when the workdir holds no ``config.json`` or the same config (keys
  in :data:`RESUMABLE_KEYS` aside); an unreadable ``config.json`` raises
  ``ValueError`` naming it.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return []
  previous = read_json(
    path,
    "It records the run's config, which a resumed run must match: put a good copy back, or "
    "start the run afresh in a new --workdir",
  )
  current = json.loads(config.to_json())
  changed = sorted(
    k
    for k in set(previous) | set(current)
    if k not in RESUMABLE_KEYS and previous.get(k) != current.get(k)
  )
  return [f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in changed]


def check_and_save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir holding a run of a different config, then saves ``config``."""
  path = os.path.join(workdir, "config.json")
  held = [f for f in RUN_FILES if os.path.exists(os.path.join(workdir, f))]
  if held and not os.path.exists(path) and not config.allow_config_change:
    raise ValueError(
      f"workdir {workdir} holds a run ({', '.join(held)}) but no config.json, so whether this "
      "config is that run's cannot be checked. Put its config.json back, use a new --workdir, "
      "or pass --config.allow_config_change=True to resume it with this config"
    )
  changes = config_changes(config, workdir)
  if changes and not config.allow_config_change:
    raise ValueError(
      f"workdir {workdir} holds a run with a different config ({'; '.join(changes)}). Use a "
      "new --workdir, or pass --config.allow_config_change=True to resume it anyway"
    )
  if jax.process_index() == 0:
    # Atomically: the other processes may be reading it for the same check.
    write_json_atomic(path, json.loads(config.to_json()), indent=2, sort_keys=True)
