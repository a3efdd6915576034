"""Checksummed checkpoints: a damaged one is found, set aside, and the run resumes identical.

One tiny run (16 updates, a checkpoint every 4) is trained once; each test
damages a copy of its workdir the way a disk or a user would, reruns it, and
compares with the undamaged run to the bit.
"""

import glob
import os
import shutil

import numpy as np
import pytest

from bigbatch_jax import training
from bigbatch_jax.training import checkpoint_digest
from bigbatch_jax.training.checkpoint import SET_ASIDE_SUFFIX, CheckpointWriteError
from tests import tiny_run
from tests.test_training import tiny_config

# -- the Checkpointer on a small state: fast -----------------------------------


def _state(value):
  w = np.random.default_rng(value).normal(size=(64, 32)).astype(np.float32)
  return {"w": w, "step": np.array(value, np.int32)}


def _saved(tmp_path, steps=(1, 2)):
  checkpoints = training.Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=3)
  for step in steps:
    checkpoints.save(step, _state(step))
  checkpoints.close()
  return tmp_path / "checkpoints"


def _restore(directory):
  state, step = training.Checkpointer(str(directory)).restore_latest_good(_state(0))
  return step, (None if step is None else int(state["step"]))


def test_restoring_reads_the_checkpoint_without_orbax_warnings(tmp_path, caplog):
  directory = _saved(tmp_path)
  with caplog.at_level("WARNING"):
    raw = training.Checkpointer(str(directory)).restore_raw(2)
    assert _restore(directory) == (2, 2)
  np.testing.assert_array_equal(raw["w"], _state(2)["w"])
  assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []


def test_a_flipped_bit_is_found_and_the_previous_checkpoint_restored(tmp_path, capsys):
  directory = _saved(tmp_path)
  _flip_a_bit(tmp_path, 2)
  with pytest.raises(checkpoint_digest.CorruptCheckpoint, match=r"checkpoint 2 .* digests: w "):
    training.Checkpointer(str(directory)).restore_raw(2)
  assert _restore(directory) == (1, 1)
  assert "does not match its digests" in capsys.readouterr().out
  assert os.listdir(str(directory) + SET_ASIDE_SUFFIX) == ["2"]


@pytest.mark.parametrize("damage", ["empty step directory", "no default/", "no digest record"])
def test_a_broken_step_directory_is_set_aside_and_not_the_good_ones(tmp_path, damage):
  directory = _saved(tmp_path)
  broken = "2"
  if damage == "empty step directory":
    broken = "3"
    os.makedirs(directory / broken)
  elif damage == "no default/":
    shutil.rmtree(directory / "2" / "default")
  else:
    os.remove(directory / "digests" / "2.json")
  assert _restore(directory) == ((2, 2) if broken == "3" else (1, 1))
  assert os.listdir(str(directory) + SET_ASIDE_SUFFIX) == [broken]


def test_with_no_good_checkpoint_left_the_restore_refuses(tmp_path):
  directory = _saved(tmp_path)
  _flip_a_bit(tmp_path, 1)
  _flip_a_bit(tmp_path, 2)
  with pytest.raises(RuntimeError, match=r"no checkpoint .* could be restored \(2: .*; 1: "):
    _restore(directory)
  # Nothing is moved while no checkpoint restores: the fault may be the restore's own.
  assert sorted(os.listdir(directory)) == ["1", "2", "digests"]


def test_the_unreadable_checkpoint_warning_is_one_readable_line(tmp_path, capsys):
  directory = _saved(tmp_path)
  (directory / "2" / "default" / "manifest.ocdbt").write_bytes(b"\0" * 64)
  assert _restore(directory) == (1, 1)
  lines = [x for x in capsys.readouterr().out.splitlines() if "checkpoint 2 " in x]
  assert len(lines) == 2 and all(len(line) < 500 for line in lines), lines
  assert "is unreadable" in lines[0] and "resuming from checkpoint 1" in lines[1]


def test_checkpoints_over_max_to_keep_left_by_a_kill_are_removed_on_resume(tmp_path):
  directory = _saved(tmp_path, steps=(1, 2, 3))  # as if killed before orbax deleted 1
  checkpoints = training.Checkpointer(str(directory), max_to_keep=2)
  assert checkpoints.restore_latest_good(_state(0))[1] == 3
  assert sorted(os.listdir(directory)) == ["2", "3", "digests"]
  assert sorted(os.listdir(directory / "digests")) == ["2.json", "3.json"]


def test_a_failed_write_raises_naming_the_directory_and_the_cause(tmp_path, monkeypatch):
  from orbax.checkpoint._src.path import atomicity

  async def no_space(self, *args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "create", no_space)
  checkpoints = training.Checkpointer(str(tmp_path / "checkpoints"))
  with pytest.raises(
    CheckpointWriteError, match=r"writing checkpoint 4 to .*checkpoints failed: .*No space left"
  ):
    checkpoints.save(4, _state(4))


# -- whole runs: slow -----------------------------------------------------------


def _config(**overrides):
  return tiny_config(checkpoint_every_steps=4, max_checkpoints_to_keep=2, **overrides)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  training.train_and_evaluate(_config(), str(workdir))
  return workdir


def _copy(straight, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(straight, workdir)
  return workdir


def _flip_a_bit(workdir, step, every_file=False):
  """Flips one bit in the middle of the largest (or each) data file of checkpoint ``step``.

  Data files lie in ``default/d/`` and in ``default/ocdbt.process_N/d/``; which
  of them a restore reads depends on the sharding (4 simulated devices read the
  first), so both are searched.
  """
  pattern = workdir / "checkpoints" / str(step) / "default" / "**" / "d" / "*"
  files = glob.glob(str(pattern), recursive=True)
  assert files
  for target in files if every_file else [max(files, key=os.path.getsize)]:
    with open(target, "r+b") as f:
      f.seek(os.path.getsize(target) // 2)
      byte = f.read(1)[0]
      f.seek(-1, 1)
      f.write(bytes([byte ^ 0x10]))


@pytest.mark.slow
def test_a_flipped_bit_is_found_set_aside_and_the_rerun_ends_identical(straight, tmp_path, capsys):
  workdir = _copy(straight, tmp_path)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["12", "16", "digests"]
  _flip_a_bit(workdir, 16, every_file=True)
  training.train_and_evaluate(_config(), str(workdir))
  out = capsys.readouterr().out
  assert "checkpoint 16 was moved to" in out and "resuming from checkpoint 12" in out
  assert os.listdir(str(workdir / "checkpoints") + SET_ASIDE_SUFFIX) == ["16"]
  tiny_run.assert_identical(tiny_run.read_result(straight), tiny_run.read_result(workdir))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["empty step directory", "no default/", "no digest record"])
def test_a_broken_step_directory_is_set_aside_and_the_good_ones_are_used(
  straight, tmp_path, damage
):
  workdir = _copy(straight, tmp_path)
  checkpoints = workdir / "checkpoints"
  if damage == "empty step directory":
    os.makedirs(checkpoints / "31")
    broken = "31"
  elif damage == "no default/":
    shutil.rmtree(checkpoints / "16" / "default")
    broken = "16"
  else:
    os.remove(checkpoints / "digests" / "16.json")
    broken = "16"
  training.train_and_evaluate(_config(), str(workdir))
  assert os.listdir(str(checkpoints) + SET_ASIDE_SUFFIX) == [broken]
  assert sorted(os.listdir(checkpoints)) == ["12", "16", "digests"]
  tiny_run.assert_identical(tiny_run.read_result(straight), tiny_run.read_result(workdir))


def test_digests_name_the_arrays_that_differ():
  tree = {"a": np.arange(4, dtype=np.float32), "b": {"c": np.zeros(3, np.int32)}}
  digests = checkpoint_digest.array_digests(tree)
  assert set(digests) == {"a", "b/c"}
  changed = {"a": tree["a"], "b": {"c": np.array([0, 1, 0], np.int32)}}
  assert checkpoint_digest.array_digests(changed)["a"] == digests["a"]
  assert checkpoint_digest.array_digests(changed)["b/c"] != digests["b/c"]
  # The same bytes under another dtype are another array.
  assert checkpoint_digest.array_digests({"a": tree["a"].view(np.int32)})["a"] != digests["a"]
