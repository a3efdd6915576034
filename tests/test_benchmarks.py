"""Smoke test of experiments/benchmarks: every part runs on tiny sizes and writes its tables.

No timing is asserted: speed is checked by the benchmark itself, on a quiet
machine, never by unit tests.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from bigbatch_jax.training import spec as spec_lib
from experiments.benchmarks import population, steps
from experiments.configs import f1
from experiments.table1 import rows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
  "--quick",
  "--batch=256",
  "--hidden=32",
  "--rounds=1",
  "--peak_size=256",
  "--epoch_steps=2",
  "--epoch_repeats=1",
  "--memory_batches=256",
  "--devices=1,2",
  "--profile_steps=1",
]


def _run_benchmark(parts: str, output) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  # The benchmark sets its own device counts; drop the test session's four devices.
  env["XLA_FLAGS"] = " ".join(
    f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f
  )
  command = [
    sys.executable,
    "-m",
    "experiments.benchmarks",
    f"--parts={parts}",
    *TINY,
    f"--output={output}",
  ]
  proc = subprocess.run(
    command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.mark.slow  # the quick benchmark in a subprocess: about 80 s on two shared cores
def test_quick_step_benchmark_writes_its_tables_and_targets(tmp_path):
  output = tmp_path / "RESULTS.md"
  proc = _run_benchmark("step", output)
  text = output.read_text()
  assert "python -m experiments.benchmarks --parts=step --quick --batch=256" in text
  for title in (
    "## Machine",
    "## Targets",
    "## Train-step throughput (batch 256)",
    "## Profile of the GhostBatchNorm step",
    "## Largest non-dot ops of the GhostBatchNorm step",
  ):
    assert title in text, title
  assert "| GhostBatchNorm step / flax BatchNorm step |" in text
  assert "| step's FLOP rate / jnp.dot peak |" in text
  assert "jnp.dot peak" in proc.stdout


@pytest.mark.slow
def test_quick_benchmark_of_every_part_writes_every_table(tmp_path):
  output = tmp_path / "RESULTS.md"
  _run_benchmark("step,overheads,pipeline,compile_memory,scaling", output)
  text = output.read_text()
  for title in (
    "## Overhead of the optional parts (batch 256)",
    "## Input pipeline (batch 256)",
    "## Compilations over an epoch (batch 256)",
    "## Peak memory (RSS) by batch size and buffer donation",
    "## Scaling over simulated devices (batch 256)",
  ):
    assert title in text, title
  assert "| train-step compilations over an epoch | 1.000 | == 1 | yes |" in text


def test_the_checkpoint_part_times_both_ways_and_replaces_only_its_section(tmp_path):
  import types

  from experiments.benchmarks import checkpoint, report

  args = types.SimpleNamespace(batch=256, hidden=32, rounds=1)
  (section,) = checkpoint.run(args)
  assert [row[0] for row in section.rows] == [
    "save, with checksums",
    "save, without",
    "restore, checking the checksums",
    "restore, without",
    "the digests alone (host copy and SHA-256)",
  ]
  assert len(section.targets) == 2 and all(t.measured > 0 for t in section.targets)
  output = tmp_path / "RESULTS.md"
  output.write_text(
    f"# B\n\n## Other\n\nkept\n\n## {section.title}\n\nold\n\n## Last\n\nkept too\n"
  )
  machine = {"load average at start": "1", "load average at end": "2", "cpu": "c"}
  report.update_markdown(str(output), "cmd", machine, [section])
  text = output.read_text()
  assert "## Other\n\nkept\n" in text and text.endswith("## Last\n\nkept too\n")
  assert "old" not in text and "| save, with checksums |" in text
  assert "Measured by `cmd` (load average 1 -> 2; CPU: c)." in text


def test_the_population_part_times_the_call_length_the_table_driver_runs():
  for _, variant, _, _, _ in population.CASES:
    config, dataset = population.row_config(variant)
    table = rows.variant_config(f1, variant, "quick")
    rows.schedule_records(table, dataset.num_train)
    assert config.steps_per_call == table.steps_per_call == 50, variant


def test_the_population_ceiling_counts_the_rows_f1_dot_flops():
  config, dataset = population.row_config("sb")
  spec = spec_lib.resolve(config, num_train=dataset.num_train, num_devices=1)
  # F1 40-128-128-128-10 at B=64: forward 2*64*39168, weight gradients the
  # same, input gradients of all but the first layer 2*64*34048.
  assert population.f1_sizes(spec, dataset.input_shape) == (128, 3, 40)
  assert population.dot_flops_per_update(spec, dataset.input_shape) == 14_385_152


def test_the_population_dots_are_each_members_products_summed_over_the_call():
  members, length, batch = 2, 3, 4
  rng = np.random.default_rng(1)
  dims = steps.f1_dims(8, 2, 5)
  x = rng.normal(size=(length, members, batch, 5)).astype(np.float32)
  # Unit-scale weights: the products stay of order one, far above rounding.
  ws = [rng.normal(size=(members, *d)).astype(np.float32) for d in dims]
  totals = steps.population_dot_totals(x, ws)
  for m in range(members):
    expected = [
      sum(np.asarray(g) for g in grads)
      for grads in zip(*(steps._dots(x[t, m], [w[m] for w in ws]) for t in range(length)))
    ]
    for got, want in zip(totals, expected, strict=True):
      # float32 rounding relative to the largest product of the layer.
      scale = float(np.abs(want).max())
      np.testing.assert_allclose(np.asarray(got)[m], want, rtol=1e-5, atol=1e-5 * scale)
  # The benchmark's call: the same computation on its own inputs, of these shapes.
  built = steps.population_dots(members, length, batch, 8, 2, 5)()
  assert [g.shape for g in built] == [g.shape for g in totals]


def test_a_population_target_above_the_dots_ceiling_is_called_out_of_reach():
  assert "out of reach" in population._ceiling_note(3.09, 4.0)
  assert "out of reach" not in population._ceiling_note(3.64, 2.5)


@pytest.mark.slow  # two populations and four single runs of the SB row: about 60 s
def test_the_population_part_times_members_split_over_devices_in_a_worker():
  from experiments.benchmarks.subprocesses import run_worker

  args = ["population", "--batch=64", "--variant=sb", "--members=2", "--devices=2", "--steps=1"]
  split = run_worker([*args, "--peak_size=64"], devices=2)
  assert split["batch"] == 64 and split["steps_per_call"] == 50
  assert split["speedup"] > 0 and split["dots_ceiling"] is None
  assert split["population_devices"] == 2
  one = population.case("sb", 2, rounds=1, peak_size=64)
  assert one["dots_ceiling"] > 0 and one["population_devices"] == 1
  with pytest.raises(RuntimeError, match="row 'sb' trains at batch 64"):
    run_worker(["population", "--batch=32", "--variant=sb", "--devices=2"], devices=2)


@pytest.mark.slow  # a single run and a population of two of the SB row, compiled and traced
def test_the_population_profile_attributes_both_calls_ops_per_update(monkeypatch):
  from experiments.benchmarks import profile

  measured = population.update_profile("sb", 2, steps=1)
  names = [*profile.CATEGORIES, "whole update (traced wall time)"]
  for side in ("single", "population"):
    assert list(measured[side]) == names
    # The trace is read and its ops attributed: each call's dots are found.
    assert measured[side]["dots (dot_general)"] > 0
    assert all(v >= 0 for v in measured[side].values())
  monkeypatch.setattr(population, "PROFILED", (("SB, P=2", "sb", 2),))
  monkeypatch.setattr(population, "update_profile", lambda variant, members: measured)
  section = population._profile_section()
  assert [row[1] for row in section.rows] == names
