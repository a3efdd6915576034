"""A run's workdir: the saved config and spec, and the check that a resumed run is the same run.

The workdir keeps the run's config (``config.json``) and its resolved spec
(``spec.json``, ``training.spec.record``). A resumed run is compared with
both: a config key that changed but leaves the spec unchanged (a key added
since the workdir was written, a spelling of the same run) resumes; a change
of the spec is refused, naming the config keys and the spec's fields that
changed, unless ``allow_config_change`` names them.
"""

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

# Spec fields that may change between a run and its resumption: the
# RESUMABLE_KEYS' fields, and which keys were set explicitly (the protocol's
# provenance, not its values).
SPEC_RESUMABLE = frozenset(
  {
    "events.log_every_steps",
    "events.stop_after_steps",
    "events.checkpoint_every_steps",
    "events.steps_per_call",
    "settings.progress_bar",
    "settings.prefetch_batches",
    "settings.max_checkpoints_to_keep",
    "settings.process_id",
    "settings.coordinator_address",
    "settings.distributed_timeout_s",
    "data.tfds_data_dir",
    "data.tfds_download",
    "plan.protocol.explicit",
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


def _read_saved(workdir: str, name: str = "config.json") -> dict[str, Any] | None:
  """The flattened ``config.json`` (or ``spec.json``) of ``workdir``; None without one."""
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return None
  saved = read_json(
    path,
    "It records the run, which a resumed run must match: put a good copy back, or "
    "start the run afresh in a new --workdir",
  )
  return _flatten(saved)


def _spec_changes(current: dict[str, Any], saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
  """Dotted spec field -> (saved, current) for each differing field, ``SPEC_RESUMABLE`` aside."""
  changed = {}
  for key in sorted(set(saved) | set(current)):
    if key in SPEC_RESUMABLE:
      continue
    before, after = saved.get(key, _ABSENT), current.get(key, _ABSENT)
    if before != after:
      changed[key] = (before, after)
  return changed


def _shown(changes: dict[str, tuple[Any, Any]]) -> str:
  return "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in changes.items())


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


def check_and_save_config(
  config: ml_collections.ConfigDict, workdir: str, spec: dict[str, Any] | None = None
) -> None:
  """Refuses to resume a workdir holding a different run, then saves ``config`` and ``spec``.

  Args:
    config: the run's config.
    workdir: the run's directory.
    spec: the run's resolved spec (``training.spec.record``), or None to
      check and save the config alone.

  With a saved ``spec.json`` and ``spec``, a changed config key is accepted
  when the spec is unchanged; otherwise each changed config key must be
  accepted (``config.allow_config_change`` True or naming it:
  :func:`allowed_changes`), and a spec field that changed under an unchanged
  config (the data or the library changed) must be named itself. The refusal
  names each change and the option that accepts exactly those.
  """
  current = _as_json(config)
  saved = _read_saved(workdir)
  saved_spec = _read_saved(workdir, "spec.json") if spec is not None else None
  current_spec = _flatten(spec) if spec is not None else {}
  known = set(current) | set(saved or {}) | set(current_spec) | set(saved_spec or {})
  allowed = allowed_changes(config.allow_config_change, known)
  held = [f for f in RUN_FILES if os.path.exists(os.path.join(workdir, f))]
  if held and saved is None and allowed is not True:
    raise ValueError(
      f"workdir {workdir} holds a run ({', '.join(held)}) but no config.json, so whether this "
      "config is that run's cannot be checked. Put its config.json back, use a new --workdir, "
      "or pass --config.allow_config_change=True to resume it with this config"
    )
  changed = _changed_fields(current, saved) if saved is not None else {}
  spec_changed = _spec_changes(current_spec, saved_spec) if saved_spec is not None else {}
  if saved_spec is not None and not spec_changed:
    changed = {}  # the same run, whichever keys spell it
  refused = {k: change for k, change in changed.items() if not _is_allowed(k, allowed)}
  if not changed:
    refused = {k: change for k, change in spec_changed.items() if not _is_allowed(k, allowed)}
  if refused:
    names = ", ".join(f'"{k}"' for k in refused) + ("," if len(refused) == 1 else "")
    what = (
      f"a different config ({_shown(refused)})"
      if changed
      else f"the same config but a different spec ({_shown(refused)}): the data or the library "
      "changed what the config resolves to"
    )
    spec_note = f" The run's spec changes with it ({_shown(spec_changed)})." if changed else ""
    raise ValueError(
      f"workdir {workdir} holds a run with {what}.{spec_note} Use a new --workdir to start "
      f"anew, or resume it with these changes: --config.allow_config_change='({names})' "
      "(True accepts any change)"
    )
  if jax.process_index() == 0:
    # Atomically: the other processes may be reading them for the same check.
    write_json_atomic(
      os.path.join(workdir, "config.json"), json.loads(config.to_json()), indent=2, sort_keys=True
    )
    if spec is not None:
      write_json_atomic(os.path.join(workdir, "spec.json"), spec, indent=2, sort_keys=True)
