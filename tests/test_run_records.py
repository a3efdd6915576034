"""A run's records: finished means trained and recorded, config.json is required to resume,
JSON files are written whole and read with errors that name them, skipped updates are limited.
"""

import json
import os
import shutil

import numpy as np
import pytest

from bigbatch_jax import training
from bigbatch_jax.training import json_files
from bigbatch_jax.training.guard import divergence_cause
from bigbatch_jax.training.run_limits import SkipLimit
from experiments.table1 import report, runner
from experiments.table1.aggregate import row_numbers
from tests.test_training import tiny_config


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
  """A run stopped by stop_after_steps at 8 of its 16 updates."""
  workdir = tmp_path_factory.mktemp("stopped")
  summary = training.train_and_evaluate(tiny_config(stop_after_steps=8), str(workdir))
  return workdir, summary


def test_a_run_stopped_early_is_not_finished_and_the_table_resumes_it(stopped, tmp_path):
  workdir, summary = stopped
  assert summary["finished"] is False and summary["trained_updates"] == 8
  assert summary["updates"] == 16
  assert not runner.finished(str(workdir))
  lines = []
  calls = []

  def train_fn(config, directory):
    calls.append(directory)
    return summary

  configs = {"lb": tiny_config()}
  ran = runner.run_all(configs, [0], str(tmp_path), train_fn, lines.append)
  assert ran == 1 and "stopped after 8 of 16 updates (not counted)" in lines[-1]
  assert not os.path.exists(os.path.join(calls[0], runner.RUN_TIME_FILE))


def test_the_resumed_run_finishes_and_is_counted(stopped, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(stopped[0], workdir)
  summary = training.train_and_evaluate(tiny_config(), str(workdir))
  assert summary["finished"] is True and summary["trained_updates"] == 16
  assert runner.finished(str(workdir))
  # A torn or emptied summary.json: not finished, so the driver resumes the run.
  (workdir / "summary.json").write_text('{"finished": tr')
  assert not runner.finished(str(workdir))
  (workdir / "summary.json").write_text("")
  assert not runner.finished(str(workdir))
  with pytest.raises(ValueError, match=r"summary.json is empty\. Delete it and rerun"):
    runner.read_json(str(workdir / "summary.json"))
  # The table counts a finished run's skipped updates and shows them.
  table = tmp_path / "table"
  shutil.copytree(workdir, table / "lb" / "seed_0")
  summary["skipped_steps"] = 3
  json_files.write_json_atomic(table / "lb" / "seed_0" / "summary.json", summary)
  row = row_numbers(str(table), "lb", [0])
  assert row["skipped_updates"] == 3 and row["seeds"] == [0]
  assert report._seeds_cell(row) == "1 (3 updates skipped)"


def test_a_workdir_without_its_config_record_is_refused(stopped, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(stopped[0], workdir)
  os.remove(workdir / "config.json")
  other_lr = tiny_config()
  other_lr.regime.lr = 0.5
  with pytest.raises(
    ValueError, match=r"holds a run \(checkpoints, metrics.jsonl, summary.json\) but no"
  ):
    training.train_and_evaluate(other_lr, str(workdir))
  (workdir / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"config.json is not valid JSON .* put a good copy back"):
    training.train_and_evaluate(tiny_config(), str(workdir))


def test_when_checkpoints_are_written_may_change_on_resume(stopped):
  config = tiny_config(stop_after_steps=8, checkpoint_every_steps=2, max_checkpoints_to_keep=5)
  assert training.config_changes(config, str(stopped[0])) == []


def test_garbage_in_the_metrics_names_the_file_and_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl, line 2, is not valid JSON .* Delete"):
    training.read_metrics(str(path))


def test_a_torn_last_record_is_dropped_on_resume(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')  # a crash mid-append
  training.MetricsLog(str(path)).truncate_after(2)
  assert training.read_metrics(str(path)) == [{"step": 1}, {"step": 2}]


def test_an_atomic_write_that_fails_leaves_the_old_file_whole(tmp_path):
  path = tmp_path / "summary.json"
  json_files.write_json_atomic(path, {"a": 1})
  with pytest.raises(TypeError):
    json_files.write_json_atomic(path, {"a": object()})
  assert json.loads(path.read_text()) == {"a": 1}
  assert os.listdir(tmp_path) == ["summary.json"]


def test_the_skip_limit_stops_at_a_fraction_or_a_run_of_consecutive_skips():
  limit = SkipLimit(num_steps=100, max_fraction=0.05, max_consecutive=4)
  assert limit.update(10, 0) is None
  assert limit.update(13, 3) is None  # 3 in a row
  assert limit.update(14, 3) is None  # the run is broken
  assert limit.update(17, 5) is None and limit.consecutive == 0
  assert "6 of 18 updates were skipped" in limit.update(18, 6)
  limit = SkipLimit(num_steps=1000, max_fraction=0.05, max_consecutive=4)
  assert limit.update(2, 2) is None
  assert "4 consecutive updates up to step 4" in limit.update(4, 4)


def test_a_run_that_skips_too_many_updates_stops_with_the_divergence_error(tmp_path):
  config = tiny_config("lb+lr", nonfinite_policy="skip", log_every_steps=1)
  config.regime.lr = 1e6
  config.divergence_loss_factor = None
  with pytest.raises(
    FloatingPointError,
    match=r"1 of 3 updates were skipped .*\(config.nonfinite_max_skip_fraction\)",
  ):
    training.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize(
  ("key", "value", "valid"),
  [
    ("divergence_loss_factor", 0.5, r"a number > 1 or None"),
    ("nonfinite_max_skip_fraction", 1.5, r"a fraction in \[0, 1\]"),
    ("nonfinite_max_consecutive_skips", 0, r"an integer >= 1"),
  ],
)
def test_bad_limit_keys_fail_before_training(tmp_path, key, value, valid):
  with pytest.raises(ValueError, match=rf"config.{key}={value!r}; valid: {valid}"):
    training.train_and_evaluate(tiny_config(**{key: value}), str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


def test_divergence_loss_factor_none_parses_from_the_command_line():
  from absl import flags
  from ml_collections import config_flags

  for value, parsed in (("None", None), ("50", 50)):
    argv = [
      "prog",
      "--config=experiments/configs/f1.py:lb",
      f"--config.divergence_loss_factor={value}",
    ]
    values = flags.FlagValues()
    # The override flags are defined from the command line, as app.run does.
    config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    assert values.config.divergence_loss_factor == parsed


def test_the_divergence_message_names_huge_inputs_or_the_resume_before_the_lr():
  assert "normalize them" in divergence_cause(3e6, None, None)
  assert "NaN or infinite" in divergence_cause(float("inf"), None, None)
  assert "resuming from checkpoint 30" in divergence_cause(1.0, 30, None)
  assert divergence_cause(1.0, 30, 2.3) is None  # the learning rate it is
  assert divergence_cause(float(np.float32(255)), None, None) is None
