"""Faults of a process (a failed write, two runs on one workdir, repeated signals), in real ones.

Each test launches ``experiments.main`` on a tiny run, optionally after Python
injected into the same process (the fault at a chosen point), and checks how
the process ends: its status, how long it took, and what it printed.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from bigbatch_jax import training
from bigbatch_jax.training.workdir_lock import LOCK_FILE, WorkdirLock, WorkdirLocked
from tests.tiny_run import RUN_FLAGS, main_after, start_run, trained_steps

FLAGS = [*RUN_FLAGS, "--config.log_every_steps=1", "--config.num_epochs=2"]  # 16 updates


def _start(workdir, *flags, inject=""):
  return start_run(main_after(inject, *FLAGS), workdir, *flags, merge_output=True)


def _run(workdir, *flags, inject="", timeout=150):
  """Runs to the end: (status, seconds, output)."""
  start = time.monotonic()
  proc = _start(workdir, *flags, inject=inject)
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, time.monotonic() - start, out


NO_SPACE = """
import errno
from orbax.checkpoint._src.path import atomicity
async def no_space(self, *args, **kwargs):
  raise OSError(errno.ENOSPC, "No space left on device")
atomicity.AtomicRenameTemporaryPath.create = no_space
"""


def test_a_failed_checkpoint_write_ends_the_process_with_the_cause(tmp_path):
  # Before the fix the process hung for ever at exit (orbax's threads waited on it).
  status, seconds, out = _run(tmp_path, "--config.checkpoint_every_steps=4", inject=NO_SPACE)
  assert status == 1, out[-3000:]
  assert f"writing checkpoint 4 to {tmp_path}/checkpoints failed" in out
  assert "No space left on device" in out
  assert seconds < 150  # startup and compilation on a loaded machine; a hang times out


def test_a_second_run_on_a_held_workdir_refuses_at_once_naming_the_holder(tmp_path):
  with WorkdirLock(str(tmp_path)):  # this test process is the holder
    status, _, out = _run(tmp_path)
  # A user error of the launcher: one line, status 2 (experiments/launch.py).
  assert status == 2 and "Traceback" not in out
  assert f"in use by another run (pid {os.getpid()} on host" in out
  assert not os.path.exists(tmp_path / "checkpoints")
  assert not os.path.exists(tmp_path / "metrics.jsonl")


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (tmp_path / LOCK_FILE).write_text(f'{{"pid": {dead.pid}, "host": "h"}}')
  with WorkdirLock(str(tmp_path)):
    assert f'"pid": {os.getpid()}' in (tmp_path / LOCK_FILE).read_text()
    with pytest.raises(WorkdirLocked, match=f"pid {os.getpid()}"), WorkdirLock(str(tmp_path)):
      pass
  assert f"taking over the stale lock {tmp_path / LOCK_FILE} of pid {dead.pid}" in (
    capsys.readouterr().out
  )
  with WorkdirLock(str(tmp_path)):  # released on exit: taken again without a message
    pass
  assert "stale" not in capsys.readouterr().out


def test_a_process_that_is_not_the_writer_takes_no_lock(tmp_path):
  with WorkdirLock(str(tmp_path)), WorkdirLock(str(tmp_path), writer=False):
    pass


@pytest.mark.parametrize(
  "sig",
  [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
  ids=["SIGTERM", "SIGINT"],
)
def test_signals_during_the_stop_are_reported_and_ignored(tmp_path, sig):
  # The first signal at step 5; another right after the stop's checkpoint, and a
  # third 0.3 s later, while the process exits (where the default action killed it).
  inject = f"""
batches, calls = loop.next_batches, []
def next_batches(*args):
  calls.append(1)
  if len(calls) == 5:
    kill(signal.{sig.name})
  return batches(*args)
loop.next_batches = next_batches
stop = loop._checkpoint_and_stop
def stop_then_signal(*args):
  stopped = stop(*args)
  kill(signal.{sig.name})
  threading.Timer(0.3, kill, (signal.{sig.name},)).start()
  return stopped
loop._checkpoint_and_stop = stop_then_signal
"""
  status, _, out = _run(tmp_path, "--config.checkpoint_every_steps=0", inject=inject)
  assert status == training.PREEMPTED_EXIT_CODE, out[-3000:]
  assert "Traceback" not in out
  assert f"{sig.name} received again: already stopping" in out
  assert f"{sig.name} received again: ignored, the run is already stopped" in out
  assert training.Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [5]


@pytest.mark.slow
def test_two_runs_on_one_workdir_the_second_refuses_and_the_first_is_untouched(tmp_path):
  first = _start(tmp_path / "run", "--config.num_epochs=8", "--config.checkpoint_every_steps=4")
  deadline = time.monotonic() + 300
  while trained_steps(tmp_path / "run") < 3:
    assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0][-3000:]
    time.sleep(0.05)
  status, _, out = _run(tmp_path / "run", "--config.num_epochs=8")
  assert status == 2 and f"pid {first.pid}" in out
  out, _ = first.communicate(timeout=600)
  assert first.returncode == 0, out[-3000:]
  steps = [r["step"] for r in training.read_metrics(str(tmp_path / "run")) if "loss" in r]
  assert steps == list(range(1, 65))
