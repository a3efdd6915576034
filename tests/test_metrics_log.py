"""The run's JSONL metrics log: resume truncation and the single writer of a multi-process run."""

import math

from bigbatch_jax import training


def test_truncate_after_keeps_records_up_to_the_step(tmp_path):
  log = training.MetricsLog(str(tmp_path / "metrics.jsonl"))
  for step in range(1, 6):
    log.write({"step": step, "loss": 1.0 / step})
  log.truncate_after(3)
  assert [r["step"] for r in log.read()] == [1, 2, 3]
  log.truncate_after(-1)
  assert log.read() == []


def test_non_finite_values_are_written_as_readable_strings(tmp_path):
  log = training.MetricsLog(str(tmp_path / "metrics.jsonl"))
  log.write({"step": 1, "loss": math.nan, "grad_norm": math.inf})
  assert log.read() == [{"step": 1, "loss": "nan", "grad_norm": "inf"}]


def test_a_reader_sees_the_writers_records_and_never_changes_the_file(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  writer = training.MetricsLog(path)
  reader = training.MetricsLog(path, writer=False)
  writer.write({"step": 1, "loss": 2.0})
  writer.write({"step": 2, "loss": 1.5})
  reader.truncate_after(-1)
  reader.write({"step": 3, "loss": 1.0})
  assert reader.read() == writer.read() == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
  assert not (tmp_path / "metrics.jsonl.tmp").exists()
