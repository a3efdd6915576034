"""A run's workdir: the saved config, and the check that a resumed run is the same run."""

from __future__ import annotations

import difflib
import json
import os
from typing import Any

import jax
import ml_collections

from bigbatch_jax.configs import default as default_config
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
    # How many updates one compiled call runs changes no record and no
    # checkpoint: a call ends at every event (``events.call_length``).
    "steps_per_call",
  }
)

# What shows that a workdir holds (part of) a run.
RUN_FILES = ("checkpoints", "metrics.jsonl", "summary.json")
# A field one of the two configs lacks.
_ABSENT = object()


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  """A config's JSON as ``{"regime.lr": 0.1, ...}``: a dotted key per value, sub-configs opened."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat


def _as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return _flatten(json.loads(config.to_json()))


def _read_saved(workdir: str) -> dict[str, Any] | None:
  """The flattened ``config.json`` of ``workdir``; None without one."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  saved = read_json(
    path,
    "It records the run's config, which a resumed run must match: put a good copy back, or "
    "start the run afresh in a new --workdir",
  )
  return _flatten(saved)


def _show(value: Any) -> str:
  return "(absent)" if value is _ABSENT else repr(value)


def _changed_fields(current: dict[str, Any], saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
  """Dotted key -> (saved, current) for each result-changing field that differs.

  A key absent from the saved config (added to the training system since the
  run was written) changes nothing when its value is the default config's:
  the run was made with that behaviour.
  """
  defaults = _as_json(default_config.get_config())
  changed = {}
  for key in sorted(set(saved) | set(current)):
    if key.split(".")[0] in RESUMABLE_KEYS:
      continue
    before, after = saved.get(key, _ABSENT), current.get(key, _ABSENT)
    if before is _ABSENT and key in defaults and after == defaults[key]:
      continue
    if before != after:
      changed[key] = (before, after)
  return changed


def config_changes(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """``"key: saved -> current"`` for each result-changing field that differs from ``workdir``'s.

  Fields are named by their dotted key (``"regime.lr: 0.1 -> 0.5"``). Empty
  when the workdir holds no ``config.json`` or the same config: keys in
  :data:`RESUMABLE_KEYS` aside, and a key the saved config lacks (added since
  the run was written) counted as the same when it holds its default
  (``bigbatch_jax.configs.default``). An unreadable ``config.json`` raises
  ``ValueError`` naming it.
  """
  saved = _read_saved(workdir)
  if saved is None:
    return []
  changed = _changed_fields(_as_json(config), saved)
  return [f"{k}: {_show(before)} -> {_show(after)}" for k, (before, after) in changed.items()]


def allowed_changes(value: Any, known: set[str]) -> bool | frozenset[str]:
  """``config.allow_config_change`` read: True (any change), False, or the fields it names.

  Args:
    value: False, True, a field name (``"regime.lr"``; commas separate
      several) or a tuple or list of them. A name also allows the fields
      below it (``"regime"``: every ``regime.*``).
    known: the config's dotted keys, which the names must be (or be a
      sub-config of).

  Raises:
    ValueError: a value of another type, or a name that is no config key
      (with the nearest keys).
  """
  if isinstance(value, bool):
    return value
  names = value.split(",") if isinstance(value, str) else value
  if not isinstance(names, (tuple, list)) or not all(isinstance(n, str) for n in names):
    raise ValueError(
      f"config.allow_config_change={value!r}: expected False, True (accept any change) or the "
      "changed fields, e.g. --config.allow_config_change='(\"regime.lr\",)'"
    )
  names = [n.strip() for n in names]
  groups = {k.rsplit(".", i)[0] for k in known for i in range(k.count(".") + 1)}
  for name in names:
    if name not in groups:
      near = difflib.get_close_matches(name, sorted(groups), n=3)
      hint = f"; did you mean {' or '.join(near)}?" if near else ""
      raise ValueError(f"config.allow_config_change names {name!r}, which is no config key{hint}")
  return frozenset(names)


def _is_allowed(key: str, allowed: bool | frozenset[str]) -> bool:
  if isinstance(allowed, bool):
    return allowed
  return any(key == name or key.startswith(name + ".") for name in allowed)


def check_and_save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir holding a run of a different config, then saves ``config``.

  A change is accepted when ``config.allow_config_change`` is True or names
  the changed field (:func:`allowed_changes`); the refusal names each changed
  field and the option that accepts exactly those.
  """
  path = os.path.join(workdir, "config.json")
  current = _as_json(config)
  saved = _read_saved(workdir)
  allowed = allowed_changes(config.allow_config_change, set(current) | set(saved or {}))
  held = [f for f in RUN_FILES if os.path.exists(os.path.join(workdir, f))]
  if held and saved is None and allowed is not True:
    raise ValueError(
      f"workdir {workdir} holds a run ({', '.join(held)}) but no config.json, so whether this "
      "config is that run's cannot be checked. Put its config.json back, use a new --workdir, "
      "or pass --config.allow_config_change=True to resume it with this config"
    )
  changed = _changed_fields(current, saved or {}) if saved is not None else {}
  refused = {k: change for k, change in changed.items() if not _is_allowed(k, allowed)}
  if refused:
    shown = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in refused.items())
    names = ", ".join(f'"{k}"' for k in refused) + ("," if len(refused) == 1 else "")
    raise ValueError(
      f"workdir {workdir} holds a run with a different config ({shown}). Use a new --workdir "
      f"to start anew, or resume it with these changes: "
      f"--config.allow_config_change='({names})' (True accepts any change)"
    )
  if jax.process_index() == 0:
    # Atomically: the other processes may be reading it for the same check.
    write_json_atomic(path, json.loads(config.to_json()), indent=2, sort_keys=True)
