"""A population's members split over groups of devices (``config.member_devices``).

Members never interact, so splitting them over devices changes where each
member's step runs, not what it computes: the split population must equal
the population on one device, member by member.
"""

import jax
import numpy as np
import pytest

from bigbatch_jax import training
from bigbatch_jax.training import parallel
from tests.test_population import equivalence_config
from tests.tiny_run import read_result

SEEDS = (0, 1, 2, 3)


def _train(workdir, **overrides):
  # 8 updates, then the test split evaluated (mapped over the split members too).
  options = {"stop_after_steps": None, "regime.epochs": 1.0, **overrides}
  config = equivalence_config("lb+lr+gbn+mult", seeds=SEEDS, **options)
  return training.train_and_evaluate(config, workdir)


def _final(tmp_path, name, **overrides):
  workdir = str(tmp_path / name)
  summary = _train(workdir, **overrides)
  state, records = read_result(workdir)
  return state, records, summary


# (devices, member devices): 2 x 1, 2 x 2 and 4 x 1 (member groups x batch); the last
# holds one member per device, which steps without the member vmap. Two populations
# of four, about 40 s each on two cores.
@pytest.mark.parametrize(
  ("devices", "member_devices"), [pytest.param(2, 2, marks=pytest.mark.slow), (4, 2), (4, 4)]
)
def test_members_split_over_devices_equal_the_population_on_one_device(
  tmp_path, devices, member_devices
):
  whole, whole_records, whole_summary = _final(tmp_path, "one", num_devices=1)
  split, records, summary = _final(
    tmp_path, "split", num_devices=devices, member_devices=member_devices
  )
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), whole, split)
  assert [(r["step"], r.get("member")) for r in records] == [
    (r["step"], r.get("member")) for r in whole_records
  ]
  losses = [r["loss"] for r in records if "loss" in r]
  np.testing.assert_allclose(losses, [r["loss"] for r in whole_records if "loss" in r], rtol=2e-4)
  np.testing.assert_allclose(
    [m["test_accuracy"] for m in summary["members"]],
    [m["test_accuracy"] for m in whole_summary["members"]],
    atol=1e-6,
  )
  assert all(m["test_accuracy"] is not None for m in summary["members"])


def test_the_state_is_split_along_the_members_axis(tmp_path):
  mesh = parallel.make_mesh(4, member_devices=2)
  assert dict(mesh.shape) == {parallel.MEMBERS: 2, "batch": 2}
  assert parallel.data_devices(mesh) == 2
  sharding = parallel.state_sharding(mesh, members=True)
  state = jax.device_put(np.zeros((4, 3), np.float32), sharding)
  # Each device holds two of the four members, all of their values.
  assert {s.data.shape for s in state.addressable_shards} == {(2, 3)}


@pytest.mark.parametrize(
  ("overrides", "message"),
  [
    ({"member_devices": 3, "num_devices": 3}, "does not divide the population's 4 members"),
    ({"member_devices": 2, "num_devices": 3}, "member_devices=2 does not divide num_devices=3"),
    ({"member_devices": 2, "seeds": None}, "this run trains one seed"),
    ({"member_devices": 0}, "config.member_devices=0; valid: an integer >= 1"),
  ],
)
def test_member_devices_that_cannot_split_the_members_are_refused(tmp_path, overrides, message):
  config = equivalence_config("lb+lr+gbn", **{"seeds": SEEDS, **overrides})
  with pytest.raises(ValueError, match=message):
    training.train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.slow  # three runs of a population of four: about 60 s on two cores
def test_a_split_population_stopped_and_resumed_equals_it_trained_straight(tmp_path):
  overrides = {"num_devices": 2, "member_devices": 2}
  straight, straight_records, _ = _final(tmp_path, "straight", **overrides)
  _train(str(tmp_path / "resumed"), stop_after_steps=4, **overrides)
  checkpoints = training.Checkpointer(str(tmp_path / "resumed" / "checkpoints"))
  assert checkpoints.latest_step() == 4
  resumed, records, _ = _final(tmp_path, "resumed", **overrides)
  jax.tree.map(np.testing.assert_array_equal, straight, resumed)
  assert records == straight_records
