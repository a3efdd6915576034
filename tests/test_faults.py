"""SIGKILL at several points of a real training process; the rerun must end bit-identical."""

import os
import signal
import time

import pytest

from bigbatch_jax import training
from tests.tiny_run import (
  assert_identical,
  finish_run,
  main_command,
  read_result,
  start_run,
  trained_steps,
)

COMMAND = main_command(
  "--config.log_every_steps=1",
  "--config.checkpoint_every_steps=1",
  "--config.num_epochs=8",  # 64 updates
)
pytestmark = pytest.mark.slow


def _kill_when(workdir, condition, timeout=300):
  """Starts a run and SIGKILLs it as soon as `condition(workdir)` holds."""
  proc = start_run(COMMAND, workdir)
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and proc.poll() is None:
    if condition(workdir):
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      return True
    time.sleep(0.002)
  proc.wait()
  return False  # finished before the condition held


def _writing_a_checkpoint(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any("tmp" in name for name in os.listdir(directory))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  finish_run(COMMAND, workdir)
  return read_result(workdir)


def test_kill_during_checkpoint_writes_then_resume_is_bit_identical(uninterrupted, tmp_path):
  kills = 0
  for target in (3, 20, 40):  # writes interrupted in epochs 1, 3 and 5
    kills += _kill_when(
      tmp_path, lambda w, t=target: trained_steps(w) >= t and _writing_a_checkpoint(w)
    )
  assert kills >= 2
  # Never only a broken checkpoint: what is left restores.
  training.Checkpointer(os.path.join(tmp_path, "checkpoints")).restore_raw()
  finish_run(COMMAND, tmp_path)
  assert_identical(uninterrupted, read_result(tmp_path))


def test_kill_mid_epoch_then_resume_is_bit_identical(uninterrupted, tmp_path):
  for target in (5, 19, 42):  # steps inside epochs 1, 3 and 6
    assert _kill_when(tmp_path, lambda w, t=target: trained_steps(w) >= t)
  finish_run(COMMAND, tmp_path)
  assert_identical(uninterrupted, read_result(tmp_path))
