"""The resume check compares configs and specs field by field: changes, keys added, overrides."""

import json
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from bigbatch_jax import training
from bigbatch_jax.training import spec as spec_lib
from tests.test_training import REPO, tiny_config


def _saved(workdir, config, *, drop=()):
  """Saves ``config`` as the workdir's record, less the dotted keys ``drop`` (an older version)."""
  (workdir / "config.json").unlink(missing_ok=True)
  training.check_and_save_config(config, str(workdir))
  record = json.loads((workdir / "config.json").read_text())
  for key in drop:
    *path, leaf = key.split(".")
    parent = record
    for part in path:
      parent = parent[part]
    del parent[leaf]
  (workdir / "config.json").write_text(json.dumps(record))


def test_a_key_added_since_the_workdir_was_written_resumes_at_its_default(tmp_path):
  # The record lacks keys (top level and in a sub-config) that the library added later.
  _saved(tmp_path, tiny_config("sb"), drop=("ghost_draws", "regime.nesterov", "seeds"))
  assert training.config_changes(tiny_config("sb"), str(tmp_path)) == []
  training.check_and_save_config(tiny_config("sb"), str(tmp_path))
  # At another value than its default, the new key changes the run.
  _saved(tmp_path, tiny_config("sb"), drop=("ghost_draws", "regime.nesterov"))
  changed = tiny_config("sb", ghost_draws="per_example")
  changed.regime.nesterov = True
  assert training.config_changes(changed, str(tmp_path)) == [
    "ghost_draws: (absent) -> 'per_example'",
    "regime.nesterov: (absent) -> True",
  ]
  with pytest.raises(ValueError, match=r"ghost_draws: \(absent\) -> 'per_example'"):
    training.check_and_save_config(changed, str(tmp_path))


def test_the_updates_per_call_may_change_on_resume(tmp_path):
  # A call ends at each event, so the records and checkpoints are the same either way.
  _saved(tmp_path, tiny_config("sb"))
  scanned = tiny_config("sb")
  scanned.steps_per_call = 50
  assert training.config_changes(scanned, str(tmp_path)) == []


def test_a_change_is_named_by_its_field_with_the_option_that_accepts_it(tmp_path):
  _saved(tmp_path, tiny_config("sb"))
  changed = tiny_config("sb")
  changed.regime.lr = 0.5
  assert training.config_changes(changed, str(tmp_path)) == ["regime.lr: 0.05 -> 0.5"]
  with pytest.raises(ValueError) as refused:
    training.check_and_save_config(changed, str(tmp_path))
  message = str(refused.value)
  assert "(regime.lr: 0.05 -> 0.5)" in message and "momentum" not in message
  assert "new --workdir" in message and "\n" not in message
  assert "--config.allow_config_change='(\"regime.lr\",)'" in message
  # A removed key (a record of a later version) is a change too.
  _saved(tmp_path, tiny_config("sb"))
  record = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**record, "future_key": 1}))
  assert training.config_changes(tiny_config("sb"), str(tmp_path)) == ["future_key: 1 -> (absent)"]


def test_allow_config_change_accepts_the_fields_it_names(tmp_path):
  _saved(tmp_path, tiny_config("sb"))
  lr_and_seed = tiny_config("sb", seed=3)
  lr_and_seed.regime.lr = 0.5
  # Naming one of two changed fields: the other is still refused, alone.
  lr_and_seed.allow_config_change = ("regime.lr",)
  with pytest.raises(ValueError, match=r"config \(seed: 0 -> 3\)\. .*'\(\"seed\",\)'"):
    training.check_and_save_config(lr_and_seed, str(tmp_path))
  for allowed in (("regime.lr", "seed"), ["seed", "regime"], "regime.lr, seed", True):
    _saved(tmp_path, tiny_config("sb"))
    lr_and_seed.allow_config_change = allowed
    training.check_and_save_config(lr_and_seed, str(tmp_path))  # accepted
    assert json.loads((tmp_path / "config.json").read_text())["regime"]["lr"] == 0.5


def test_allow_config_change_refuses_what_it_cannot_mean(tmp_path):
  config = tiny_config("sb")
  config.allow_config_change = ("regime.lrr",)
  with pytest.raises(ValueError, match=r"names 'regime.lrr', which is no config key; did you mean"):
    training.check_and_save_config(config, str(tmp_path))
  config.allow_config_change = 3
  with pytest.raises(ValueError, match=r"allow_config_change=3: expected False, True"):
    training.check_and_save_config(config, str(tmp_path))
  # A run without its record: only True resumes it (no field can be checked).
  (tmp_path / "metrics.jsonl").write_text("")
  config.allow_config_change = ("seed",)
  with pytest.raises(ValueError, match=r"but no config.json"):
    training.check_and_save_config(config, str(tmp_path))
  config.allow_config_change = True
  training.check_and_save_config(config, str(tmp_path))


@pytest.mark.parametrize(
  ("flag", "value"),
  [("'(\"regime.lr\",)'", ("regime.lr",)), ("regime.lr", "regime.lr"), ("True", True)],
)
def test_allow_config_change_from_the_command_line(flag, value, monkeypatch):
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  argv = [
    "prog",
    f"--config={REPO}/experiments/configs/f1.py:sb",
    f"--config.allow_config_change={flag.strip(chr(39))}",
  ]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads overrides from sys.argv
  values(argv)
  assert values.config.allow_config_change == value


def _spec(config, num_train=512):
  return spec_lib.record(spec_lib.resolve(config, num_train=num_train, num_devices=1))


def _saved_with_spec(workdir, config, num_train=512):
  for name in ("config.json", "spec.json"):
    (workdir / name).unlink(missing_ok=True)
  training.check_and_save_config(config, str(workdir), _spec(config, num_train))


def test_a_config_change_that_leaves_the_spec_unchanged_resumes(tmp_path):
  # The ghost size spelled out at the value None resolves to: another config, the same run.
  _saved_with_spec(tmp_path, tiny_config("lb+lr+gbn", ghost_batch_size=None))
  spelled = tiny_config("lb+lr+gbn", ghost_batch_size=16)  # the base batch: None's ghost size
  assert training.config_changes(spelled, str(tmp_path)) != []
  training.check_and_save_config(spelled, str(tmp_path), _spec(spelled))  # accepted
  # Without the saved spec only the config can be compared: the same change is refused.
  _saved_with_spec(tmp_path, tiny_config("lb+lr+gbn", ghost_batch_size=None))
  (tmp_path / "spec.json").unlink()
  with pytest.raises(ValueError, match=r"different config \(ghost_batch_size: None -> 16\)"):
    training.check_and_save_config(spelled, str(tmp_path), _spec(spelled))


def test_a_change_of_the_spec_names_the_config_key_and_the_spec_field(tmp_path):
  _saved_with_spec(tmp_path, tiny_config("sb"))
  changed = tiny_config("sb")
  changed.regime.lr = 0.5
  with pytest.raises(ValueError) as refused:
    training.check_and_save_config(changed, str(tmp_path), _spec(changed))
  message = str(refused.value)
  assert "different config (regime.lr: 0.05 -> 0.5)" in message
  assert "spec changes with it (plan.regime.lr: 0.05 -> 0.5)" in message
  assert "--config.allow_config_change='(\"regime.lr\",)'" in message
  changed.allow_config_change = ("regime.lr",)
  training.check_and_save_config(changed, str(tmp_path), _spec(changed))  # accepted
  assert json.loads((tmp_path / "spec.json").read_text())["plan"]["regime"]["lr"] == 0.5


def test_the_same_config_resolving_to_another_spec_is_refused_by_its_field(tmp_path):
  # The data changed under the same config: 512 training examples then, 448 now.
  _saved_with_spec(tmp_path, tiny_config("sb"), num_train=512)
  config = tiny_config("sb")
  with pytest.raises(ValueError) as refused:
    training.check_and_save_config(config, str(tmp_path), _spec(config, num_train=448))
  message = str(refused.value)
  assert "the same config but a different spec (" in message
  assert "plan.num_train: 512 -> 448" in message
  config.allow_config_change = ("plan.num_train", "plan.num_steps")
  training.check_and_save_config(config, str(tmp_path), _spec(config, num_train=448))


def test_the_fields_that_may_change_on_resume_are_not_compared(tmp_path):
  _saved_with_spec(tmp_path, tiny_config("sb"))
  config = tiny_config("sb", steps_per_call=10, log_every_steps=7, progress_bar=False)
  training.check_and_save_config(config, str(tmp_path), _spec(config))  # accepted
