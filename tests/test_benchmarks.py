"""Smoke test of experiments/benchmarks: every part runs on tiny sizes and writes its tables.

No timing is asserted: speed is checked by the benchmark itself, on a quiet
machine, never by unit tests.
"""

import os
import subprocess
import sys

import pytest

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


def test_a_run_of_some_parts_replaces_their_sections_and_keeps_the_others(tmp_path):
  from experiments.benchmarks import report

  path = tmp_path / "RESULTS.md"
  path.write_text("# Benchmarks\n\nintro\n\n## Kept\n\nold kept\n\n## Population\n\nold\n")
  machine = {"load average at start": "1.0", "load average at end": "2.0", "cores": "2"}
  section = report.Section("Population", ["a"], [["new row"]], "new text")
  report.merge_sections(str(path), "python -m experiments.benchmarks --parts=p", machine, [section])
  text = path.read_text()
  assert text.startswith("# Benchmarks\n\nintro\n\n## Kept\n\nold kept\n\n## Population\n")
  assert "old\n" not in text.split("## Population")[1] and "| new row |" in text
  assert "Measured by `python -m experiments.benchmarks --parts=p` (load average 1.0" in text
  added = report.Section("Other", [], [], "other text")
  report.merge_sections(str(path), "cmd", machine, [added])
  assert path.read_text().endswith(
    "## Other\n\nMeasured by `cmd` (load average 1.0 -> 2.0, 2 cores).\n\nother text\n"
  )
