"""Multi-host training with jax.distributed: 2 local processes x 2 CPU devices (gloo).

Each process is a real `python -m experiments.main` with its own simulated
devices; the coordinator is on localhost.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from bigbatch_jax import training
from tests.tiny_run import REPO, RUN_FLAGS

COMMON = [
  *RUN_FLAGS,
  "--config.log_every_steps=2",
  "--config.checkpoint_every_steps=6",
]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(workdir, devices, *flags, process_id=None, num_processes=None, port=None):
  command = [sys.executable, "-m", "experiments.main", *COMMON, f"--workdir={workdir}", *flags]
  if process_id is not None:
    command += [
      "--config.distributed=True",
      f"--config.coordinator_address=localhost:{port}",
      f"--config.num_processes={num_processes}",
      f"--config.process_id={process_id}",
    ]
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  return subprocess.Popen(
    command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )


def _run_two_processes(workdir, *flags):
  port = _free_port()
  procs = [_launch(workdir, 2, *flags, process_id=i, num_processes=2, port=port) for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]


def _run_one_process(workdir, *flags):
  proc = _launch(workdir, 4, *flags)
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, out[-3000:]


def _params(workdir):
  return training.Checkpointer(os.path.join(workdir, "checkpoints")).restore_raw()["params"]


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_process")
  _run_one_process(workdir)
  return workdir


@pytest.mark.slow  # two processes and a four-device run: about 60 s on two shared cores
def test_two_processes_equal_one_process_with_four_devices(single_process_run, tmp_path):
  _run_two_processes(tmp_path)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    _params(single_process_run),
    _params(tmp_path),
  )
  # One checkpoint per step, written once for both processes.
  assert sorted(os.listdir(tmp_path / "checkpoints")) == sorted(
    os.listdir(single_process_run / "checkpoints")
  )
  # One metrics log, written by process 0 alone: each record once, as in one process.
  _assert_same_metrics(single_process_run, tmp_path)


def _assert_same_metrics(expected_dir, actual_dir):
  expected = training.MetricsLog(str(expected_dir / "metrics.jsonl")).read()
  actual = training.MetricsLog(str(actual_dir / "metrics.jsonl")).read()
  assert [r["step"] for r in actual] == [r["step"] for r in expected]
  for want, got in zip(expected, actual):
    for key in ("loss", "test_accuracy"):
      if key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_two_processes_resume_a_checkpoint_written_once(single_process_run, tmp_path):
  _run_two_processes(tmp_path, "--config.stop_after_steps=12")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["12", "6", "digests"]
  _run_two_processes(tmp_path)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    _params(single_process_run),
    _params(tmp_path),
  )
  _assert_same_metrics(single_process_run, tmp_path)


@pytest.mark.slow
def test_a_missing_peer_fails_initialize_within_the_timeout(tmp_path):
  start = time.monotonic()
  proc = _launch(
    tmp_path,
    2,
    "--config.distributed_timeout_s=10",
    process_id=0,
    num_processes=2,
    port=_free_port(),
  )
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode != 0
  assert time.monotonic() - start < 90
  assert "DEADLINE_EXCEEDED" in out or "timed out" in out.lower(), out[-2000:]


@pytest.mark.slow
def test_a_peer_killed_mid_run_makes_the_other_fail_not_hang(tmp_path):
  port = _free_port()
  flags = ["--config.distributed_timeout_s=10", "--config.num_epochs=400"]
  procs = [_launch(tmp_path, 2, *flags, process_id=i, num_processes=2, port=port) for i in range(2)]
  # Wait until training is under way (the first metrics are written), then kill a peer.
  deadline = time.monotonic() + 120
  while not (tmp_path / "metrics.jsonl").exists() and time.monotonic() < deadline:
    time.sleep(0.5)
  assert (tmp_path / "metrics.jsonl").exists(), "training did not start"
  procs[1].send_signal(signal.SIGKILL)
  start = time.monotonic()
  out = procs[0].communicate(timeout=180)[0]
  assert procs[0].returncode != 0, out[-2000:]
  assert time.monotonic() - start < 150
