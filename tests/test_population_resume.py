"""A population run killed (SIGKILL) or stopped (SIGTERM) mid-run resumes bit-identical."""

import signal

import jax
import numpy as np
import pytest

from bigbatch_jax import training
from tests.test_population import equivalence_config
from tests.tiny_run import (
  assert_identical,
  finish_run,
  main_command,
  read_result,
  signal_once_trained,
)

COMMAND = main_command(
  "--config.seeds=(0,1,2)",
  "--config.log_every_steps=1",
  "--config.checkpoint_every_steps=2",
  "--config.num_epochs=6",  # 48 updates
)
pytestmark = pytest.mark.slow


def _signal_when(workdir, target, sig):
  """Sends ``sig`` once ``target`` training records (all members) exist."""
  return signal_once_trained(COMMAND, workdir, sig, target)


def test_kill_and_sigterm_mid_population_then_resume_is_bit_identical(tmp_path):
  straight = tmp_path / "straight"
  finish_run(COMMAND, straight)
  interrupted = tmp_path / "interrupted"
  rc, err = _signal_when(interrupted, 3 * 10, signal.SIGKILL)  # 3 members x 10 steps
  assert rc == -signal.SIGKILL, err[-2000:]
  rc, err = _signal_when(interrupted, 3 * 30, signal.SIGTERM)
  assert rc == training.PREEMPTED_EXIT_CODE, err[-2000:]
  finish_run(COMMAND, interrupted)
  assert_identical(read_result(straight), read_result(interrupted))
  records = read_result(straight)[1]
  assert {r["seed"] for r in records} == {0, 1, 2}


def test_a_population_on_four_devices_equals_it_on_one(tmp_path):
  finals = []
  for devices in (1, 4):
    workdir = str(tmp_path / str(devices))
    config = equivalence_config("lb+lr+gbn+mult", seeds=(0, 1), num_devices=devices)
    training.train_and_evaluate(config, workdir)
    finals.append(read_result(workdir)[0])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), *finals)
