"""A population that does not fit in memory trains in groups and ends as one population.

The free memory is made small on purpose (``parallel.available_memory_bytes``
patched to a value between the compiled step's need for G and for G + 1
members), so that a population of 4 splits into groups of the size the
compiled memory allows.
"""

import json
import logging
import os
import signal

import jax
import numpy as np
import pytest

from bigbatch_jax import data as data_lib
from bigbatch_jax import training
from bigbatch_jax.training import loop, parallel, population_groups
from bigbatch_jax.training.population_grid import population_of
from tests.test_population import _final_state, _records, equivalence_config

SEEDS = (4, 7)
GRID = {"regime.lr": (0.05, 0.1)}  # crossed with SEEDS: 4 members


def _config(**overrides):
  # 12 updates, evaluated at the end.
  config = equivalence_config(
    "lb+lr+gbn", seeds=SEEDS, stop_after_steps=None, **{"regime.epochs": 1.5, **overrides}
  )
  config.population_grid = GRID
  return config


def _step_bytes(config, size):
  """What the library measures for the first ``size`` members of ``config``'s population."""
  dataset = data_lib.load_data(config)
  mesh = parallel.make_mesh(config.num_devices)
  plan = training.make_plan(config, dataset.num_train, mesh.size)
  members = population_of(config, plan, SEEDS)
  return population_groups.member_steps(config, plan, mesh, dataset, members, size).memory_bytes


def _free_for(monkeypatch, config, size):
  """Patches the free memory to lie between the needs of ``size`` and ``size + 1`` members."""
  fits, too_many = _step_bytes(config, size), _step_bytes(config, size + 1)
  assert fits < too_many
  free = (fits + too_many) // 2
  monkeypatch.setattr(parallel, "available_memory_bytes", lambda mesh: free)
  return free


def _summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def _close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)


def test_a_population_that_does_not_fit_trains_in_groups_and_resumes_after_a_group(
  tmp_path, monkeypatch, caplog
):
  config = _config()
  whole = str(tmp_path / "whole")
  training.train_and_evaluate(config, whole)
  free = _free_for(monkeypatch, config, 3)
  grouped = str(tmp_path / "grouped")
  # SIGTERM in the middle of the second group (members 3..3): the first is finished.
  calls = {"n": 0}
  real_next = loop.next_batches

  def next_then_stop(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] == 12 + 5:  # the first group's 12 calls, then 5 of the second's
      os.kill(os.getpid(), signal.SIGTERM)
    return real_next(*args, **kwargs)

  monkeypatch.setattr(loop, "next_batches", next_then_stop)
  with caplog.at_level(logging.WARNING), pytest.raises(training.Preempted):
    training.train_and_evaluate(config, grouped)
  with open(os.path.join(grouped, "groups.json")) as f:
    needed = population_groups.Grouping(**json.load(f))
  assert needed == population_groups.Grouping(4, 3, needed.bytes_per_group, free)
  assert needed.bytes_per_group <= free
  line = "a population of 4 members trains in 2 groups of 3 members (sizes [3, 1])"
  assert any(line in r.getMessage() and f"({free} bytes)" in r.getMessage() for r in caplog.records)
  first = os.path.join(grouped, "groups", "members_0-2")
  assert training.Checkpointer(os.path.join(first, "checkpoints")).latest_step() == 12
  finished_at = os.path.getmtime(os.path.join(first, "summary.json"))

  # The same command again: the first group is not trained again, the second resumes.
  monkeypatch.setattr(loop, "next_batches", real_next)
  prepared = []
  real_prepare = loop._prepare
  monkeypatch.setattr(
    loop, "_prepare", lambda *a, **k: prepared.append(a[4]) or real_prepare(*a, **k)
  )
  summary = training.train_and_evaluate(config, grouped)
  assert [p.seeds for p in prepared] == [(7,)]
  assert os.path.getmtime(os.path.join(first, "summary.json")) == finished_at

  # The whole population's outputs, members in order, equal to the one-group run.
  expected = _summary(whole)
  assert summary == _summary(grouped)
  assert [(m["member"], m["seed"], m["hyperparameters"]) for m in summary["members"]] == [
    (m["member"], m["seed"], m["hyperparameters"]) for m in expected["members"]
  ]
  for key in ("test_accuracy", "test_error", "weight_distance"):
    np.testing.assert_allclose(
      [m[key] for m in summary["members"]], [m[key] for m in expected["members"]], rtol=1e-5
    )
  _close(_final_state(grouped), _final_state(whole))
  records, whole_records = _records(grouped), _records(whole)
  assert [(r["step"], r["member"], r["seed"]) for r in records] == [
    (r["step"], r["member"], r["seed"]) for r in whole_records
  ]
  for r, w in zip(records, whole_records, strict=True):
    assert r["hyperparameters"] == w["hyperparameters"]
    for key in ("loss", "test_accuracy", "test_loss"):
      if key in w:
        np.testing.assert_allclose(r[key], w[key], rtol=1e-5)
  assert os.path.exists(os.path.join(grouped, "error_curves.png"))


def test_a_group_of_one_member_that_does_not_fit_is_the_memory_error(tmp_path, monkeypatch):
  config = _config()
  free = _step_bytes(config, 1) - 1
  monkeypatch.setattr(parallel, "available_memory_bytes", lambda mesh: free)
  with pytest.raises(MemoryError) as raised:
    training.train_and_evaluate(config, str(tmp_path / "run"))
  message = str(raised.value)
  assert "population of 4 members at batch_size=64" in message
  assert "GiB per device but" in message and "use a smaller --config.batch_size" in message
  assert "one member alone still needs" in message and f"against {free} free" in message
  assert not os.path.exists(tmp_path / "run" / "groups")


def _measured(needs):
  calls = []

  def measure(size):
    calls.append(size)
    return needs(size)

  return measure, calls


def test_the_group_size_is_fitted_from_two_compilations_and_confirmed():
  error = "the step of 10 members does not fit"
  # Linear: 100 + 50 n bytes; 420 free holds 6 members (400), not 7 (450).
  measure, calls = _measured(lambda n: 100 + 50 * n)
  grouping = population_groups.choose_grouping(error, measure, 10, 420)
  assert (grouping.group_size, grouping.bytes_per_group) == (6, 400)
  assert calls == [1, 2, 6]
  assert grouping.bounds() == [(0, 6), (6, 10)]
  # Worse than linear beyond 4 members: the fit says 6, the compilations say 4.
  measure, calls = _measured(lambda n: 100 + 50 * n + (200 if n > 4 else 0))
  grouping = population_groups.choose_grouping(error, measure, 10, 420)
  assert (grouping.group_size, calls) == (4, [1, 2, 6, 5, 4])
  assert grouping.bounds() == [(0, 4), (4, 8), (8, 10)]
  # Never the whole population, whose step did not fit.
  measure, calls = _measured(lambda n: 10 * n)
  assert population_groups.choose_grouping(error, measure, 3, 10**6).group_size == 2
  # Two members: groups of one, measured once.
  measure, calls = _measured(lambda n: 10 * n)
  assert population_groups.choose_grouping(error, measure, 2, 15).group_size == 1
  assert calls == [1]
  with pytest.raises(MemoryError, match=r"does not fit\. Split into groups, one member alone"):
    population_groups.choose_grouping(error, lambda n: 10 * n, 2, 9)


def test_a_saved_grouping_of_another_population_is_refused(tmp_path):
  population_groups.write_grouping(str(tmp_path), population_groups.Grouping(4, 2, 10, 20))
  assert population_groups.read_grouping(str(tmp_path), 4).group_size == 2
  with pytest.raises(ValueError, match=r"splits a population of 4 members, .* has 6"):
    population_groups.read_grouping(str(tmp_path), 6)
  assert population_groups.read_grouping(str(tmp_path / "none"), 4) is None
