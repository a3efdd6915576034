"""The tiny runs the tests launch (training, faults, preemption, multi-process) or step.

One definition of the launched run's flags, of the environment it runs in and
of how its outputs are read back, so that every resume test compares the same
things; and one set-up of the real step for the tests that drive it batch by
batch.
"""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

from bigbatch_jax import training
from bigbatch_jax.training import parallel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# F1 (2 hidden layers of 32) on synthetic data, batches 16/64, ghost batch 8.
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
# The launched runs see two simulated CPU devices.
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
# Runs experiments.main after ``inject`` (Python run first in the same process,
# e.g. a wrapper that calls ``kill`` at a chosen point).
LAUNCH = """
import os, signal, runpy, sys, threading
from bigbatch_jax.training import loop, checkpoint
def kill(sig=signal.SIGTERM):
  os.kill(os.getpid(), sig)
{inject}
sys.argv = ["experiments.main", *sys.argv[1:]]
runpy.run_module("experiments.main", run_name="__main__")
"""


def main_command(*flags) -> list[str]:
  """``python -m experiments.main`` on the tiny run (:data:`RUN_FLAGS`), then ``flags``."""
  return [sys.executable, "-m", "experiments.main", *RUN_FLAGS, *flags]


def main_after(inject: str, *flags) -> list[str]:
  """The command that runs experiments.main with ``flags`` after the Python ``inject``."""
  return [sys.executable, "-c", LAUNCH.format(inject=inject), *flags]


def start_run(command, workdir, *flags, merge_output=False) -> subprocess.Popen:
  """Starts ``command --workdir=workdir *flags`` in the repository, in :data:`ENV`.

  Its stderr is piped and stdout dropped; with ``merge_output`` both are piped
  together to stdout.
  """
  return subprocess.Popen(
    [*command, f"--workdir={workdir}", *flags],
    cwd=REPO,
    env=ENV,
    stdout=subprocess.PIPE if merge_output else subprocess.DEVNULL,
    stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
    text=True,
  )


def finish_run(command, workdir) -> None:
  """Runs ``command --workdir=workdir`` to its end; it must succeed (else its stderr's end)."""
  proc = start_run(command, workdir)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]


def table1_command(workdir, *flags) -> list[str]:
  """A tiny Table 1 driver run: rows sb and lb, seed 0, an F1 of width 8 on synthetic data."""
  return [
    sys.executable, "-m", "experiments.table1", f"--workdir={workdir}", "--variants=sb,lb",
    "--seeds=0", "--config.dataset=synthetic", "--config.model_options.hidden=8",
    "--config.base_batch_size=32", "--config.large_batch_size=128",
    "--config.progress_bar=False", *flags,
  ]  # fmt: skip


def trained_steps(workdir) -> int:
  """How many training records ``metrics.jsonl`` holds so far (0 before it exists)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return sum(1 for line in f if '"loss"' in line)


def signal_once_trained(command, workdir, sig, target, watched=None, timeout=300):
  """Runs ``command`` in ``workdir`` and sends ``sig`` once ``watched`` holds ``target`` records.

  ``watched``: the directory whose ``metrics.jsonl`` is counted (the workdir
  when None). Returns the run's exit status and stderr.
  """
  proc = start_run(command, workdir)
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and proc.poll() is None:
    if trained_steps(watched or workdir) >= target:
      proc.send_signal(sig)
      break
    time.sleep(0.002)
  _, err = proc.communicate(timeout=600)
  return proc.returncode, err


def read_records(workdir) -> list[dict]:
  """The records of ``metrics.jsonl`` without the one field two identical runs differ in.

  ``examples_per_sec`` is a wall-clock measurement.
  """
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = f.read().splitlines()
  return [{k: v for k, v in json.loads(line).items() if k != "examples_per_sec"} for line in lines]


def read_result(workdir):
  """The last checkpoint's (params, batch_stats, opt_state) and the run's records."""
  state = training.Checkpointer(os.path.join(workdir, "checkpoints")).restore_raw()
  return (state["params"], state["batch_stats"], state["opt_state"]), read_records(workdir)


def assert_identical(a, b) -> None:
  """Two :func:`read_result` values are equal to the bit."""
  jax.tree.map(np.testing.assert_array_equal, a[0], b[0])
  assert a[1] == b[1]


def sharded_step(plan, model, tx, example, *, num_devices=1, **step_args):
  """The real training step of ``plan`` on ``num_devices`` devices, and its first state.

  The state is initialized at ``example`` with key 0; ``step_args`` go to
  ``parallel.shard_train_step`` (``skip_nonfinite``, ``noise_variance``).

  Returns:
    ``(step, state, mesh)``.
  """
  mesh = parallel.make_mesh(num_devices)
  state = training.create_train_state(model, tx, example, jax.random.key(0))
  step = parallel.shard_train_step(
    training.train_step,
    mesh,
    model=model,
    tx=tx,
    learning_rate=training.lr_schedule(plan),
    **step_args,
  )
  return step, state, mesh
