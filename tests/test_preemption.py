"""SIGTERM/SIGINT: the step reached is checkpointed, the exit is non-zero, the rerun ends identical.

Signals come from outside (like a scheduler) or, to hit a precise point (the
first step, an evaluation, a checkpoint write), from the process itself
through a wrapper installed before ``experiments.main`` runs: a real signal to
a real process, at a chosen moment.
"""

import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from bigbatch_jax import training
from bigbatch_jax.training import loop as loop_lib
from tests.test_training import tiny_config
from tests.tiny_run import (
  REPO,
  RUN_FLAGS,
  assert_identical,
  main_after,
  read_result,
  start_run,
  table1_command,
  trained_steps,
)

FLAGS = [
  *RUN_FLAGS,
  "--config.log_every_steps=1",
  "--config.num_epochs=8",  # 64 updates, an evaluation every 8
]


def _start(workdir, *flags, inject=""):
  return start_run(main_after(inject, *FLAGS), workdir, *flags)


def _run(workdir, *flags, inject="", expect=0):
  proc = _start(workdir, *flags, inject=inject)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == expect, err[-3000:]
  return err


def _signal_when(workdir, condition, sig, *flags, timeout=300):
  """Starts a run, sends ``sig`` once ``condition(workdir)`` holds: (seconds to exit, rc, err)."""
  proc = _start(workdir, *flags)
  deadline = time.monotonic() + timeout
  while not condition(workdir):
    assert proc.poll() is None and time.monotonic() < deadline, "the run ended first"
    time.sleep(0.005)
  proc.send_signal(sig)
  sent = time.monotonic()
  _, err = proc.communicate(timeout=600)
  return time.monotonic() - sent, proc.returncode, err


def _steps(workdir):
  return training.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps()


# -- in process: fast -------------------------------------------------------


def test_a_signal_checkpoints_the_step_reached_and_the_rerun_ends_identical(tmp_path, monkeypatch):
  config = tiny_config("lb+lr+gbn+mult", checkpoint_every_steps=0, log_every_steps=1)
  training.train_and_evaluate(config, str(tmp_path / "straight"))
  before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

  after_call = loop_lib._after_call

  def signal_at_step_5(loop, state, metrics, step, length, end_step):
    if step + length == 5:
      os.kill(os.getpid(), signal.SIGTERM)  # arrives while the step's events run
    return after_call(loop, state, metrics, step, length, end_step)

  monkeypatch.setattr(loop_lib, "_after_call", signal_at_step_5)
  workdir = tmp_path / "stopped"
  with pytest.raises(training.Preempted, match=r"SIGTERM stopped the run at step 5 of 16") as info:
    training.train_and_evaluate(config, str(workdir))
  assert info.value.checkpoint_step == 5 and "Rerun the same command" in str(info.value)
  assert _steps(workdir) == [5]
  # The handlers were the run's only: the previous ones are back.
  assert {sig: signal.getsignal(sig) for sig in before} == before
  monkeypatch.setattr(loop_lib, "_after_call", after_call)
  training.train_and_evaluate(config, str(workdir))
  assert_identical(read_result(tmp_path / "straight"), read_result(workdir))


# -- real processes: slow ---------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  _run(workdir, "--config.checkpoint_every_steps=0")
  return read_result(workdir)


@pytest.mark.slow
def test_signals_at_four_points_then_rerun_is_bit_identical(uninterrupted, tmp_path):
  rare = "--config.checkpoint_every_steps=0"  # only the preemption checkpoints
  # 1. At the first step, before any checkpoint exists.
  err = _run(
    tmp_path,
    rare,
    inject="loop.next_batches = (lambda f: lambda *a: (kill(), f(*a))[1])(loop.next_batches)",
    expect=training.PREEMPTED_EXIT_CODE,
  )
  assert _steps(tmp_path) == [1], err[-2000:]
  assert "SIGTERM stopped the run at step 1 of 64" in err and "command: " in err
  # 2. Mid-epoch, from outside; the exit is measured.
  seconds, rc, err = _signal_when(tmp_path, lambda w: trained_steps(w) >= 12, signal.SIGTERM, rare)
  assert rc == training.PREEMPTED_EXIT_CODE, err[-2000:]
  stopped = _steps(tmp_path)[-1]
  assert stopped >= 12 and seconds < 60
  print(f"SIGTERM to exit: {seconds:.2f} s")
  # 3. During the evaluation after step 24 (epoch 3): it finishes, then the stop.
  _run(
    tmp_path,
    rare,
    inject="f = loop.evaluation_record\n"
    "def g(*a):\n  kill() if a[-1] == 24 else None\n  return f(*a)\nloop.evaluation_record = g",
    expect=training.PREEMPTED_EXIT_CODE,
  )
  assert _steps(tmp_path)[-1] == 24
  # 4. SIGINT from outside, and a second signal while its checkpoint is written.
  seconds, rc, err = _signal_when(tmp_path, lambda w: trained_steps(w) >= 40, signal.SIGINT, rare)
  assert rc == training.PREEMPTED_EXIT_CODE and "SIGINT stopped the run" in err, err[-2000:]
  err = _run(
    tmp_path,
    rare,
    inject="f = checkpoint.Checkpointer.save\n"
    "def g(self, step, state):\n  kill()\n  f(self, step, state)\n  kill(signal.SIGINT)\n"
    "checkpoint.Checkpointer.save = g\n"
    "loop.next_batches = (lambda f: lambda *a: (kill(), f(*a))[1])(loop.next_batches)",
    expect=training.PREEMPTED_EXIT_CODE,
  )
  assert "received again" in err, err[-2000:]
  _run(tmp_path, rare)
  assert_identical(uninterrupted, read_result(tmp_path))


@pytest.mark.slow
def test_a_signal_during_a_periodic_checkpoint_write_saves_that_step_once(tmp_path):
  every = "--config.checkpoint_every_steps=16"
  straight = tmp_path / "straight"
  _run(straight, every)
  # The signal arrives while orbax writes checkpoint 32 in the background.
  inject = (
    "f = checkpoint.Checkpointer.save\n"
    "def g(self, step, state):\n  f(self, step, state)\n  kill() if step == 32 else None\n"
    "checkpoint.Checkpointer.save = g"
  )
  stopped = tmp_path / "stopped"
  _run(stopped, every, inject=inject, expect=training.PREEMPTED_EXIT_CODE)
  assert _steps(stopped) == [16, 32]
  _run(stopped, every)
  assert_identical(read_result(straight), read_result(stopped))


@pytest.mark.slow
def test_a_signal_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path):
  from tests.test_multiprocess import _free_port, _launch, _params

  flags = ["--config.num_epochs=8"]  # 64 steps, a checkpoint every 6 (orbax reports them too)

  def two_processes(workdir):
    port = _free_port()
    return [_launch(workdir, 2, *flags, process_id=i, num_processes=2, port=port) for i in (0, 1)]

  def finish(workdir):
    for proc in two_processes(workdir):
      out = proc.communicate(timeout=300)[0]
      assert proc.returncode == 0, out[-3000:]

  straight, stopped = tmp_path / "straight", tmp_path / "stopped"
  finish(straight)
  # First from the start, then resumed (the steps no longer count the calls).
  for records, signalled in ((5, 1), (14, 0)):  # logged every 2 steps
    procs = two_processes(stopped)
    deadline = time.monotonic() + 300
    while trained_steps(stopped) < records:
      assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
      time.sleep(0.01)
    procs[signalled].send_signal(signal.SIGTERM)
    try:
      outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
      for p in procs:  # none left behind when the processes disagree and hang
        p.kill()
    for proc, out in zip(procs, outputs):
      assert proc.returncode == training.PREEMPTED_EXIT_CODE, out[-3000:]
    # Both stopped at the one step they agreed on, and wrote its checkpoint together.
    step = _steps(stopped)[-1]
    for out in outputs:
      assert f"stopped the run at step {step} of 64" in out, out[-2000:]
  finish(stopped)
  jax.tree.map(np.testing.assert_array_equal, _params(straight), _params(stopped))


@pytest.mark.slow
def test_a_signal_inside_a_table_run_stops_the_driver_and_its_rerun_continues(tmp_path):
  command = table1_command(
    tmp_path,
    "--config.regime.epochs=4.0",
    "--config.regime.drop_epochs=(2.0,)",
    "--config.log_every_steps=1",
  )
  proc = subprocess.Popen(
    command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
  )
  run = tmp_path / "sb" / "seed_0"
  deadline = time.monotonic() + 300
  while trained_steps(run) < 10:  # the first of the two runs, under way
    assert proc.poll() is None and time.monotonic() < deadline
    time.sleep(0.01)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == training.PREEMPTED_EXIT_CODE, err[-3000:]
  assert "command: " in err and "-m experiments.table1" in err
  (stopped,) = _steps(run)
  rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "[1/2] sb seed 0: test accuracy" in rerun.stdout and "| lb | LB |" in rerun.stdout
  assert stopped < 64 and _steps(run)[-1] == 64
