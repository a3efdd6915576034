"""The batch-size sweep (experiments.sweep): end to end on the tiny preset, resume, the JSON
and the figure drawn from it, bad flags, and a stop by signal that a rerun continues."""

import json
import os
import signal
import subprocess
import sys

import pytest

from bigbatch_jax import training
from experiments import sweep
from experiments.configs import default
from experiments.sweep import aggregate, figure, grid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = list(grid.PRESETS["tiny"]["batch_sizes"])


def tiny_configs(**overrides):
  preset = grid.PRESETS["tiny"]
  return grid.sweep_configs(
    default.get_config(),
    SIZES,
    "lb+lr+gbn",
    preset["probe_epochs"],
    {**preset["config"], "num_devices": 1, **overrides},
  )


def counting(calls):
  def train_fn(config, directory):
    calls.append(directory)
    return training.train_and_evaluate(config, directory)

  return train_fn


def test_tiny_sweep_end_to_end_then_resume_skips_finished_runs(tmp_path):
  workdir = str(tmp_path)
  calls, lines = [], []
  summary = sweep.run_sweep(
    tiny_configs(), SIZES, "lb+lr+gbn", [0], workdir, lines.append, train_fn=counting(calls)
  )
  # The probe, the shared small-batch run, then one run per (curve, larger B).
  assert len(calls) == 2 + 2 * (len(SIZES) - 1)
  with open(tmp_path / "sweep.json") as f:
    assert json.load(f) == summary
  assert (tmp_path / "sweep.png").stat().st_size > 1000
  noise = summary["noise_scale"]
  assert noise["b_small"] == SIZES[0] and noise["b_big"] == 8 * SIZES[0]
  assert noise["epoch"] == pytest.approx(0.5) and noise["trace_sigma"] > 0
  for variant in ("lb", "lb+lr+gbn"):
    points = summary["curves"][variant]
    assert [p["batch_size"] for p in points] == SIZES
    assert all(0 <= p["test_accuracy"] <= 100 for p in points)
  # Both curves start at the one small-batch run.
  assert summary["curves"]["lb"][0] == summary["curves"]["lb+lr+gbn"][0]
  assert any(line.startswith("B_simple = ") for line in lines)

  calls.clear()
  again = sweep.run_sweep(
    tiny_configs(), SIZES, "lb+lr+gbn", [0], workdir, lines.append, train_fn=counting(calls)
  )
  assert calls == [] and again == summary
  # A finished run made with another config is refused, not mixed in.
  with pytest.raises(ValueError, match="different config"):
    sweep.run_sweep(
      tiny_configs(**{"regime.lr": 0.05}), SIZES, "lb+lr+gbn", [0], workdir, lines.append
    )


def point(b, accuracy, std=0.0):
  return {"batch_size": b, "test_accuracy": accuracy, "std": std, "seeds": [], "diverged": 0}


def test_summarize_reads_each_seed_and_finds_where_the_gap_opens(tmp_path):
  accuracies = {"sb_b32": [0.80, 0.82], "lb_b128": [0.795, 0.80], "lb_b512": [0.70, 0.72]}
  for name, values in accuracies.items():
    for seed, value in enumerate(values):
      directory = tmp_path / name / f"seed_{seed}"
      directory.mkdir(parents=True)
      (directory / "summary.json").write_text(
        json.dumps({"test_accuracy": value, "finished": True})
      )
  (tmp_path / "lb+lr_b128" / "seed_0").mkdir(parents=True)
  (tmp_path / "lb+lr_b128" / "seed_0" / "failed.json").write_text("{}")
  summary = aggregate.summarize(
    str(tmp_path), [32, 128, 512], "lb+lr", [0, 1], {"b_simple": 100.0}, 1.5, {"epochs": 1.0}
  )
  lb = summary["curves"]["lb"]
  assert [p["test_accuracy"] for p in lb] == pytest.approx([81.0, 79.75, 71.0])
  assert lb[0]["std"] == pytest.approx(1.4142135, rel=1e-5)
  remedy = summary["curves"]["lb+lr"]
  assert remedy[1]["test_accuracy"] is None and remedy[1]["diverged"] == 1
  assert summary["gap_onset"] == {"lb": 512, "lb+lr": 128}  # diverged counts as a gap
  assert aggregate.gap_onset([point(32, 80.0), point(64, 79.5)], 1.0) is None
  assert aggregate.gap_onset([point(32, 80.0), point(64, 79.0)], 1.0) == 64


def test_figure_is_drawn_from_the_json_alone(tmp_path):
  summary = {
    "setup": {"model": "f1", "dataset": "mnist1d", "epochs": 20.0},
    "curves": {
      "lb": [point(32, 80.0), point(256, 78.0, 0.5), point(1024, None)],
      "lb+lr+gbn": [point(32, 80.0), point(256, 79.5), point(1024, 77.0)],
    },
    "noise_scale": {"b_simple": 300.0, "epoch": 1.0},
  }
  path = tmp_path / "sweep.json"
  path.write_text(json.dumps(summary))
  png = figure.draw(str(path))
  assert png == str(tmp_path / "sweep.png") and os.path.getsize(png) > 1000
  # No B_simple line when the estimate is not a positive number (a noisy |G|^2 < 0).
  summary["noise_scale"] = {"b_simple": -5.0, "epoch": 1.0}
  path.write_text(json.dumps(summary))
  assert os.path.getsize(figure.draw(str(path), str(tmp_path / "b.png"))) > 1000


@pytest.mark.parametrize(
  "text, match",
  [("64,32", "ascending"), ("32", "at least two"), ("32,x", "integers"), ("0,32", "positive")],
)
def test_bad_batch_sizes_are_named(text, match):
  with pytest.raises(ValueError, match=match):
    grid.parse_batch_sizes(text)


@pytest.mark.parametrize(
  "name, match",
  [("lb", "plain curve"), ("sb", "must start with 'lb'"), ("lb+lr+ra", "equal epochs"),
   ("lb+xx", "unknown part 'xx'")],
)  # fmt: skip
def test_bad_remedies_are_named(name, match):
  with pytest.raises(ValueError, match=match):
    grid.parse_remedy(name)


def test_probe_epochs_must_fall_inside_the_regime():
  with pytest.raises(ValueError, match=r"--probe_epochs=2\.0"):
    grid.sweep_configs(default.get_config(), [16, 64], "lb+lr", 2.0, {"regime.epochs": 1.0})


def command(workdir, *flags):
  return [sys.executable, "-m", "experiments.sweep", f"--workdir={workdir}", *flags]


def test_command_line_rejects_bad_flags_clearly(tmp_path):
  bad = subprocess.run(
    command(tmp_path, "--preset=tiny", "--batch_sizes=16,4096"),
    cwd=REPO, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert bad.returncode != 0 and "4096 exceeds the 480 training examples" in bad.stderr
  assert not (tmp_path / "sweep.json").exists()


@pytest.mark.slow  # three processes and five runs: about 100 s on two shared cores
def test_signal_stops_the_driver_and_a_rerun_continues(tmp_path):
  # Long enough runs (64 epochs of the tiny preset) that the signal lands inside one.
  flags = ("--preset=tiny", "--config.regime.epochs=64", "--config.checkpoint_every_steps=200")
  process = subprocess.Popen(
    command(tmp_path, *flags), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    text=True,
  )  # fmt: skip
  out = []
  for line in process.stdout:
    out.append(line)
    if line.startswith("[1/3] sb_b16 seed 0 ("):
      break
  process.send_signal(signal.SIGTERM)
  rest, _ = process.communicate(timeout=120)
  # Inside the training loop: its checkpoint and PREEMPTED_EXIT_CODE; before the
  # loop starts (data, compilation): 128 + SIGTERM. Either way nothing is lost.
  codes = {143, training.PREEMPTED_EXIT_CODE}
  assert process.returncode in codes, "".join(out) + rest
  assert "rerun the same command to resume" in rest
  assert not (tmp_path / "sb_b16" / "seed_0" / "summary.json").exists()
  again = subprocess.run(
    command(tmp_path, *flags), cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert "noise_probe seed 0: done before, skipped" in again.stdout
  assert (tmp_path / "sweep.json").exists()
