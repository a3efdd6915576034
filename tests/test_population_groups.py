"""A population that does not fit in memory trains in groups and ends as one population.

The free memory is made small on purpose (``parallel.available_memory_bytes``
patched to a value between the compiled step's need for G and for G + 1
members), so that a population of 2 splits into groups of 1 and one of 4
into groups of 3 and 1, as the compiled memory says.
"""

import ast
import json
import logging
import os
import signal

import jax
import numpy as np
import pytest

from bigbatch_jax import training
from bigbatch_jax.training import loop, parallel, population_groups
from bigbatch_jax.training import spec as spec_lib
from bigbatch_jax.training.members import split_population
from bigbatch_jax.training.population_spec import population_of
from experiments import launch
from experiments.configs import common
from tests.test_population import _final_state, _records, equivalence_config
from tests.tiny_run import (
  RUN_FLAGS,
  assert_identical,
  finish_run,
  main_after,
  read_result,
  signal_once_trained,
)

SEEDS = (4, 7)
GRID = {"regime.lr": (0.05, 0.1)}  # crossed with SEEDS: 4 members


def _config(grid=None, **overrides):
  """A tiny F1 population of SEEDS (crossed with ``grid``): 8 updates, evaluated at the end."""
  config = equivalence_config(
    "lb+lr+gbn", seeds=SEEDS, stop_after_steps=None, **{"regime.epochs": 1.0, **overrides}
  )
  config.population_grid = grid
  return config


def _step_bytes(config, size, seeds=SEEDS):
  """What the library measures for the first ``size`` members of ``config``'s population."""
  dataset = spec_lib.load_data(config)
  mesh = parallel.make_mesh(config.num_devices)
  spec = spec_lib.resolve(config, num_train=dataset.num_train, num_devices=mesh.size)
  members = population_of(config, spec.plan, seeds)
  return population_groups.member_steps(spec, mesh, dataset, members, size).memory_bytes


def _train_measuring(monkeypatch, config, workdir):
  """Trains ``config`` in ``workdir``; the largest need per device its compiled calls had."""
  needs = []
  measure = parallel.step_memory_bytes
  monkeypatch.setattr(
    parallel, "step_memory_bytes", lambda c: needs.append(measure(c)) or needs[-1]
  )
  training.train_and_evaluate(config, workdir)
  monkeypatch.setattr(parallel, "step_memory_bytes", measure)
  return max(needs)


def _summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def _grouping(workdir):
  with open(os.path.join(workdir, "groups.json")) as f:
    return population_groups.Grouping(**json.load(f))


def _logged(caplog, line, free):
  return any(line in r.getMessage() and f"({free} bytes)" in r.getMessage() for r in caplog.records)


def assert_equal_to_one_population(grouped, whole):
  """The outputs of a population trained in groups equal those of it trained at once."""
  summary, expected = _summary(grouped), _summary(whole)
  names = ("member", "seed", "hyperparameters")
  assert [[m.get(k) for k in names] for m in summary["members"]] == [
    [m.get(k) for k in names] for m in expected["members"]
  ]
  for key in ("test_accuracy", "test_error", "best_test_accuracy", "weight_distance"):
    np.testing.assert_allclose(
      [m[key] for m in summary["members"]], [m[key] for m in expected["members"]], rtol=1e-5
    )
  assert summary["finished"] and summary["seeds"] == expected["seeds"]
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
    _final_state(grouped),
    _final_state(whole),
  )
  records, whole_records = _records(grouped), _records(whole)
  assert [[r["step"], *(r.get(k) for k in names)] for r in records] == [
    [r["step"], *(r.get(k) for k in names)] for r in whole_records
  ]
  for r, w in zip(records, whole_records, strict=True):
    for key in ("loss", "test_accuracy", "test_loss", "weight_distance"):
      assert (key in r) == (key in w)
      if key in w:
        np.testing.assert_allclose(r[key], w[key], rtol=1e-5)
  assert os.path.exists(os.path.join(grouped, "error_curves.png"))


def _split_in_two(monkeypatch, config, tmp_path):
  """Trains ``config`` (2 members) at once; then makes its step not fit, by one byte."""
  whole = str(tmp_path / "whole")
  free = _train_measuring(monkeypatch, config, whole) - 1
  monkeypatch.setattr(parallel, "available_memory_bytes", lambda mesh: free)
  return whole, free


@pytest.mark.slow  # a population trained whole and in groups: about 40 s on two shared cores
def test_a_population_that_does_not_fit_trains_in_groups_equal_to_one_population(
  tmp_path, monkeypatch, caplog
):
  config = _config()
  whole, free = _split_in_two(monkeypatch, config, tmp_path)
  grouped = str(tmp_path / "grouped")
  with caplog.at_level(logging.WARNING):
    summary = training.train_and_evaluate(config, grouped)
  grouping = _grouping(grouped)
  assert grouping == population_groups.Grouping(2, 1, grouping.bytes_per_group, free)
  assert grouping.bytes_per_group <= free
  line = "a population of 2 members trains in 2 groups of 1 members (sizes [1, 1])"
  assert _logged(caplog, line, free)
  for name in ("members_0-0", "members_1-1"):
    assert os.path.exists(os.path.join(grouped, "groups", name, "summary.json"))
  assert summary == _summary(grouped)
  assert_equal_to_one_population(grouped, whole)
  # The drivers split it into the single runs of its seeds, as any population.
  directories = {seed: str(tmp_path / f"seed_{seed}") for seed in SEEDS}
  split_population(grouped, directories)
  merged = _final_state(grouped)
  for member, seed in enumerate(SEEDS):
    assert _summary(directories[seed])["seed"] == seed
    jax.tree.map(
      np.testing.assert_array_equal,
      _final_state(directories[seed]),
      jax.tree.map(lambda x, m=member: x[m], merged),
    )


@pytest.mark.slow
def test_a_population_split_in_groups_resumes_without_training_a_finished_group_again(
  tmp_path, monkeypatch
):
  config = _config()
  whole, _ = _split_in_two(monkeypatch, config, tmp_path)
  grouped = str(tmp_path / "grouped")
  # SIGTERM in the middle of the second group: the first is finished.
  calls = []
  real_next = loop.next_batches

  def next_then_stop(*args, **kwargs):
    calls.append(1)
    if len(calls) == 8 + 3:  # the first group's 8 calls, then 3 of the second's
      os.kill(os.getpid(), signal.SIGTERM)
    return real_next(*args, **kwargs)

  monkeypatch.setattr(loop, "next_batches", next_then_stop)
  with pytest.raises(training.Preempted):
    training.train_and_evaluate(config, grouped)
  first = os.path.join(grouped, "groups", "members_0-0")
  second = os.path.join(grouped, "groups", "members_1-1")
  assert training.Checkpointer(os.path.join(first, "checkpoints")).latest_step() == 8
  assert training.Checkpointer(os.path.join(second, "checkpoints")).latest_step() == 3
  finished_at = os.path.getmtime(os.path.join(first, "summary.json"))

  # The same command again: the first group is not trained again, the second resumes.
  monkeypatch.setattr(loop, "next_batches", real_next)
  prepared = []
  real_prepare = loop._prepare
  monkeypatch.setattr(
    loop, "_prepare", lambda *a, **k: prepared.append(a[3]) or real_prepare(*a, **k)
  )
  training.train_and_evaluate(config, grouped)
  assert [p.seeds for p in prepared] == [(SEEDS[1],)]
  assert os.path.getmtime(os.path.join(first, "summary.json")) == finished_at
  assert_equal_to_one_population(grouped, whole)


def test_a_group_is_done_once_its_summary_is_written_and_its_checkpoint_at_the_end(tmp_path):
  directory = str(tmp_path / "group")
  checkpoints = training.Checkpointer(os.path.join(directory, "checkpoints"))
  checkpoints.save(8, {"w": np.zeros(2)})
  checkpoints.close()
  assert not population_groups.group_done(directory, 8)  # no summary: stopped before its end
  with open(os.path.join(directory, "summary.json"), "w") as f:
    json.dump({}, f)
  assert population_groups.group_done(directory, 8)
  assert not population_groups.group_done(directory, 12)  # stop_after_steps raised since


@pytest.mark.slow
def test_a_grid_population_splits_into_the_largest_groups_in_member_order(
  tmp_path, monkeypatch, caplog
):
  config = _config(GRID)
  whole = str(tmp_path / "whole")
  training.train_and_evaluate(config, whole)
  # Between the needs of 3 and 4 members: groups of 3 and 1, across the grid's points.
  fits, too_many = _step_bytes(config, 3), _step_bytes(config, 4)
  free = (fits + too_many) // 2
  monkeypatch.setattr(parallel, "available_memory_bytes", lambda mesh: free)
  grouped = str(tmp_path / "grouped")
  with caplog.at_level(logging.WARNING):
    training.train_and_evaluate(config, grouped)
  assert _grouping(grouped) == population_groups.Grouping(4, 3, fits, free)
  line = "a population of 4 members trains in 2 groups of 3 members (sizes [3, 1])"
  assert _logged(caplog, line, free)
  assert_equal_to_one_population(grouped, whole)
  assert [m["hyperparameters"]["regime.lr"] for m in _summary(grouped)["members"]] == [
    0.05,
    0.05,
    0.1,
    0.1,
  ]


def _record_allocations(monkeypatch) -> list[int]:
  """The sizes of the populations whose state is allocated (not abstract) from now on."""
  allocated = []
  for module in (loop, population_groups):
    set_up = module.set_up_run

    def recording(*args, set_up=set_up, **kwargs):
      run = set_up(*args, **kwargs)
      if isinstance(jax.tree.leaves(run.state)[0], jax.Array):
        allocated.append(len(kwargs["seeds"]))
      return run

    monkeypatch.setattr(module, "set_up_run", recording)
  return allocated


def test_a_population_that_fits_is_allocated_once(tmp_path, monkeypatch):
  allocated = _record_allocations(monkeypatch)
  training.train_and_evaluate(_config(), str(tmp_path / "run"))
  assert allocated == [len(SEEDS)]


def test_a_group_of_one_member_that_does_not_fit_is_the_memory_error(tmp_path, monkeypatch):
  monkeypatch.setattr(parallel, "available_memory_bytes", lambda mesh: 1)
  allocated = _record_allocations(monkeypatch)
  with pytest.raises(MemoryError) as raised:
    training.train_and_evaluate(_config(), str(tmp_path / "run"))
  # The memory was checked on the abstract state: no member's state was allocated.
  assert allocated == []
  message = str(raised.value)
  assert "population of 2 members at batch_size=64" in message
  assert "GiB per device but" in message and "use a smaller --config.batch_size" in message
  assert "one member alone still needs" in message and "against 1 free" in message
  assert not os.path.exists(tmp_path / "run" / "groups")
  assert not os.path.exists(tmp_path / "run" / "groups.json")


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


# A population of 3 seeds on the launched tiny run (tests/tiny_run.py), 48 updates.
LAUNCHED = {
  "seeds": (0, 1, 2),
  "log_every_steps": 1,
  "checkpoint_every_steps": 2,
  "num_epochs": 6.0,
}


def _launched_config():
  """The config ``experiments.main`` builds from :data:`RUN_FLAGS` and :data:`LAUNCHED`."""
  flags = dict(flag[len("--config.") :].split("=", 1) for flag in RUN_FLAGS[1:])
  config = launch.load_config(RUN_FLAGS[0].split("=", 1)[1])
  common.override(config, {**{k: _value(v) for k, v in flags.items()}, **LAUNCHED})
  return config


def _value(text):
  """A flag's value as ``config_flags`` reads it: a Python literal, else the string."""
  try:
    return ast.literal_eval(text)
  except ValueError:
    return text


def _signal_in_second_group(command, workdir, target, sig):
  """Runs ``command`` and sends ``sig`` once the second group logged ``target`` updates."""
  second = os.path.join(workdir, "groups", "members_2-2")
  return signal_once_trained(command, workdir, sig, target, watched=second)


@pytest.mark.slow
def test_kill_and_sigterm_in_a_group_then_rerun_ends_bit_identical(tmp_path):
  config = _launched_config()
  # Between the needs of 2 and 3 members: groups of 2 and 1.
  free = (_step_bytes(config, 2, config.seeds) + _step_bytes(config, 3, config.seeds)) // 2
  inject = "from bigbatch_jax.training import parallel\n"
  inject += f"parallel.available_memory_bytes = lambda mesh: {free}"
  flags = [f"--config.{k}={v}".replace(" ", "") for k, v in LAUNCHED.items()]
  command = main_after(inject, *RUN_FLAGS, *flags)
  straight = tmp_path / "straight"
  finish_run(command, straight)
  assert _grouping(str(straight)).bounds() == [(0, 2), (2, 3)]
  interrupted = tmp_path / "interrupted"
  rc, err = _signal_in_second_group(command, interrupted, 10, signal.SIGKILL)
  assert rc == -signal.SIGKILL, err[-2000:]
  rc, err = _signal_in_second_group(command, interrupted, 30, signal.SIGTERM)
  assert rc == training.PREEMPTED_EXIT_CODE, err[-2000:]
  finish_run(command, interrupted)
  assert_identical(read_result(straight), read_result(interrupted))
  assert [r["member"] for r in read_result(straight)[1][:3]] == [0, 1, 2]
