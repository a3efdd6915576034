"""The drivers' device placement: a population's members split over CPU devices, single runs on
one (the table placed so end to end: ``test_table1``)."""

import pytest

from bigbatch_jax.training.population_grid import member_config_json
from experiments.table1 import devices
from tests.test_table1 import tiny_config


@pytest.mark.parametrize(
  "size, devices_, groups", [(10, 2, 2), (3, 2, 1), (10, 4, 2), (12, 4, 4), (1, 2, 1), (2, 8, 2)]
)
def test_members_split_evenly_over_at_most_the_devices(size, devices_, groups):
  assert devices.member_groups(size, devices_) == groups


def test_placed_gives_each_group_one_device_and_refuses_devices_the_config_sets():
  config = tiny_config("sb")
  assert devices.placed(config, 10, 1) is config  # one device: the config's own placement
  population = devices.placed(config, 10, 2)
  assert (population.num_devices, population.member_devices) == (2, 2)
  assert (config.num_devices, config.member_devices) == (None, 1)  # a copy
  single = devices.placed(config, 1, 2)
  assert (single.num_devices, single.member_devices) == (1, 1)
  config.num_devices = 2
  with pytest.raises(ValueError, match=r"config.num_devices=2.*--cpu_devices=1"):
    devices.placed(config, 10, 2)


def test_a_split_members_saved_config_is_its_single_run_on_one_groups_devices():
  saved = {"seed": 0, "seeds": [0, 1, 2, 3], "num_devices": 4, "member_devices": 2}
  single = member_config_json(saved, 3, {})
  assert single == {"seed": 3, "seeds": None, "population_grid": None, "num_devices": 2,
                    "member_devices": 1}  # fmt: skip
