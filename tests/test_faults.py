"""SIGKILL at several points of a real training process; the rerun must end bit-identical."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from bigbatch_jax import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny run the subprocess tests (faults, preemption, multi-process) launch.
RUN_FLAGS = [
  "--config=experiments/configs/f1.py:lb+lr+gbn+mult,quick",
  "--config.dataset=synthetic",
  "--config.model_options.hidden=32",
  "--config.model_options.depth=2",
  "--config.base_batch_size=16",
  "--config.large_batch_size=64",
  "--config.ghost_batch_size=8",
  "--config.progress_bar=False",
]
COMMAND = [
  sys.executable,
  "-m",
  "experiments.main",
  *RUN_FLAGS,
  "--config.log_every_steps=1",
  "--config.checkpoint_every_steps=1",
  "--config.num_epochs=8",  # 64 updates
]
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}

pytestmark = pytest.mark.slow


def _start(workdir):
  return subprocess.Popen(
    [*COMMAND, f"--workdir={workdir}"],
    cwd=REPO,
    env=ENV,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )


def _finish(workdir):
  proc = _start(workdir)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]


def _kill_when(workdir, condition, timeout=300):
  """Starts a run and SIGKILLs it as soon as `condition(workdir)` holds."""
  proc = _start(workdir)
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


def _trained_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return sum(1 for line in f if '"loss"' in line)


def _result(workdir):
  state = training.Checkpointer(os.path.join(workdir, "checkpoints")).restore_raw()
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  for record in records:
    record.pop("examples_per_sec", None)
  return (state["params"], state["batch_stats"], state["opt_state"]), records


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  _finish(workdir)
  return _result(workdir)


def _assert_identical(a, b):
  jax.tree.map(np.testing.assert_array_equal, a[0], b[0])
  assert a[1] == b[1]


def test_kill_during_checkpoint_writes_then_resume_is_bit_identical(uninterrupted, tmp_path):
  kills = 0
  for target in (3, 20, 40):  # writes interrupted in epochs 1, 3 and 5
    kills += _kill_when(
      tmp_path, lambda w, t=target: _trained_steps(w) >= t and _writing_a_checkpoint(w)
    )
  assert kills >= 2
  # Never only a broken checkpoint: what is left restores.
  training.Checkpointer(os.path.join(tmp_path, "checkpoints")).restore_raw()
  _finish(tmp_path)
  _assert_identical(uninterrupted, _result(tmp_path))


def test_kill_mid_epoch_then_resume_is_bit_identical(uninterrupted, tmp_path):
  for target in (5, 19, 42):  # steps inside epochs 1, 3 and 6
    assert _kill_when(tmp_path, lambda w, t=target: _trained_steps(w) >= t)
  _finish(tmp_path)
  _assert_identical(uninterrupted, _result(tmp_path))
