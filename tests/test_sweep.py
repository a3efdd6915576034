"""The batch-size sweep (experiments.sweep): end to end on the tiny preset, resume, B_simple
along the B_S run, the tuned curve's selection on the validation split, the JSON and the
figure drawn from it, bad flags, and a stop by signal that a rerun continues."""

import json
import os
import signal
import subprocess
import sys

import pytest

from bigbatch_jax import training
from experiments import sweep
from experiments.configs import default
from experiments.sweep import aggregate, figure, grid, noise

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = list(grid.PRESETS["tiny"]["batch_sizes"])
EPOCHS = list(grid.PRESETS["tiny"]["noise_epochs"])  # 0.5 and 1: updates 15 and 30 at B = 16


def tiny_configs(tuned_lr=False, **overrides):
  preset = grid.PRESETS["tiny"]
  return grid.sweep_configs(
    default.get_config(),
    SIZES,
    "lb+lr+gbn",
    EPOCHS,
    {**preset["config"], "num_devices": 1, **overrides},
    tuned_lr,
  )


def counting(calls, configs=None):
  def train_fn(config, directory):
    calls.append(directory)
    if configs is not None:
      configs.append(config)
    return training.train_and_evaluate(config, directory)

  return train_fn


def sweep_of(workdir, lines, train_fn=training.train_and_evaluate, tuned_lr=False, **overrides):
  return sweep.run_sweep(
    tiny_configs(tuned_lr, **overrides), SIZES, "lb+lr+gbn", [0], workdir, lines.append,
    train_fn=train_fn, noise_epochs=EPOCHS,
  )  # fmt: skip


@pytest.mark.slow  # a sweep in subprocesses, then resumed: about 45 s on two shared cores
def test_tiny_sweep_end_to_end_then_resume_skips_finished_runs(tmp_path):
  workdir = str(tmp_path)
  calls, lines = [], []
  summary = sweep_of(workdir, lines, counting(calls))
  # The B_S run in two stages (to epoch 0.5, then to its end), then one run per (curve, larger B).
  sb = str(tmp_path / "sb_b16" / "seed_0")
  assert calls == [sb, sb] + [str(tmp_path / f"{v}_b64" / "seed_0") for v in ("lb", "lb+lr+gbn")]
  with open(tmp_path / "sweep.json") as f:
    assert json.load(f) == summary
  assert (tmp_path / "sweep.png").stat().st_size > 1000
  for variant in ("lb", "lb+lr+gbn"):
    points = summary["curves"][variant]
    assert [p["batch_size"] for p in points] == SIZES
    assert all(0 <= p["test_accuracy"] <= 100 for p in points)
  # Both curves start at the one small-batch run; no tuned curve unless asked for.
  assert summary["curves"]["lb"][0] == summary["curves"]["lb+lr+gbn"][0]
  assert "lb+lr tuned" not in summary["curves"] and summary["lr_selection"] == []
  readings = summary["relation"]["curves"]
  assert set(readings) == {"lb", "lb+lr+gbn"}
  assert all(r["reading"].startswith("B_simple ") for r in readings.values())
  assert sum(line.startswith("B_simple = ") for line in lines) == len(EPOCHS)

  calls.clear()
  again = sweep_of(workdir, lines, counting(calls))
  assert calls == [] and again == summary
  # A finished run made with another config is refused, not mixed in.
  with pytest.raises(ValueError, match="different config"):
    sweep_of(workdir, lines, **{"regime.lr": 0.05})


@pytest.mark.slow  # a staged B_S run: about 35 s on two shared cores
def test_b_simple_is_measured_along_the_b_s_run_itself_at_each_epoch(tmp_path):
  workdir, calls, configs = str(tmp_path), [], []
  config = tiny_configs()["sb_b16"]
  record = noise.measure_along(
    "sb_b16", config, workdir, 0, EPOCHS, counting(calls, configs), print
  )
  run = str(tmp_path / "sb_b16" / "seed_0")
  # One run, trained in stages: stopped at update 15 (epoch 0.5), then to its end (30).
  assert calls == [run, run] and record["run"] == run
  assert [c.stop_after_steps for c in configs] == [15, None]
  assert [r["step"] for r in record["along"]] == [15, 30]
  assert [r["epoch"] for r in record["along"]] == EPOCHS
  assert [r["requested_epoch"] for r in record["along"]] == EPOCHS
  assert all(r["b_small"] == 16 and r["b_big"] == 128 for r in record["along"])
  # Each value is that run's checkpoint at that update, measured again here.
  for r in record["along"]:
    again = noise.measure_at(run, r["step"], 16)
    for key in ("b_simple", "grad_sq", "trace_sigma"):
      assert r[key] == pytest.approx(again[key], rel=1e-5)
  assert record["along"][0]["b_simple"] != pytest.approx(record["along"][1]["b_simple"])
  with open(os.path.join(run, "summary.json")) as f:
    assert json.load(f)["finished"] is True

  # Resumed: nothing trains or is measured again; an epoch whose checkpoint is gone is
  # refused, naming it.
  calls.clear()
  lines = []
  resumed = noise.measure_along("sb_b16", config, workdir, 0, EPOCHS, counting(calls), lines.append)
  assert resumed == record and calls == [] and lines == []
  with pytest.raises(ValueError, match=r"trained past update 3 \(epoch 0\.1\)"):
    noise.measure_along("sb_b16", config, workdir, 0, [0.1, 1.0], counting(calls), print)


@pytest.mark.slow  # ten selection members and five runs: about a minute on two shared cores
def test_tuned_curve_selects_each_lr_on_the_validation_split(tmp_path):
  calls, configs, lines = [], [], []
  summary = sweep_of(str(tmp_path), lines, counting(calls, configs), tuned_lr=True)
  trained = dict(zip(calls, configs, strict=True))
  selections = summary["lr_selection"]
  assert [s["batch_size"] for s in selections] == SIZES
  for s in selections:
    members = {}
    # The grid, and each extension beyond its end, trained on the training set less 10 %
    # and evaluated that 10 %.
    grid_dirs = sorted((tmp_path / "lr_selection" / s["row"]).glob("grid*"))
    assert [d.name for d in grid_dirs] == ["grid"] + [
      f"grid_{'lowest' if e[0] < 0.025 else 'highest'}_{i}"
      for i, e in enumerate(s["extensions"], 1)
    ]
    for grid_dir in grid_dirs:
      selection = trained[str(grid_dir)]
      assert selection.validation_fraction == 0.1 and selection.regime.lr == 0.1
      with open(grid_dir / "summary.json") as f:
        grid_summary = json.load(f)
      assert grid_summary["evaluated_split"] == "validation"
      for m in grid_summary["members"]:
        members.setdefault(m["hyperparameters"]["regime.lr"], []).append(100 * m["test_accuracy"])
    added = [lr for extension in s["extensions"] for lr in extension]
    assert s["base_lrs"] == pytest.approx(sorted([0.025, 0.05, 0.1, 0.2, 0.4, *added]))
    factor = (s["batch_size"] / 16) ** 0.5
    assert s["applied_lrs"] == pytest.approx([lr * factor for lr in s["base_lrs"]])
    assert s["validation_accuracy_per_seed"] == [members[lr] for lr in s["base_lrs"]]
    best = max(s["validation_accuracy_mean"])
    assert s["selected_base_lr"] == s["base_lrs"][s["validation_accuracy_mean"].index(best)]
    edges = {0: "lowest", len(s["base_lrs"]) - 1: "highest"}
    assert s["edge"] == edges.get(s["base_lrs"].index(s["selected_base_lr"]))
    # Then the sweep's seed trains at the selected rate on the whole training set.
    seed_run = trained[str(tmp_path / s["row"] / "seed_0")]
    assert seed_run.regime.lr == s["selected_base_lr"] and not seed_run.validation_fraction
    assert seed_run.variant == ("sb" if s["batch_size"] == 16 else "lb+lr")
    with open(tmp_path / s["row"] / "seed_0" / "summary.json") as f:
      seed_summary = json.load(f)
    assert seed_summary["evaluated_split"] == "test"
    assert summary["curves"]["lb+lr tuned"][SIZES.index(s["batch_size"])]["seeds"] == [
      pytest.approx(100 * seed_summary["test_accuracy"])
    ]
  assert set(summary["gap_onset"]) == {"lb", "lb+lr+gbn", "lb+lr tuned"}
  calls.clear()
  assert sweep_of(str(tmp_path), lines, counting(calls), tuned_lr=True) == summary
  assert calls == []


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
  noise_record = {"along": [{"b_simple": 150.0, "epoch": 1.0}, {"b_simple": 90.0, "epoch": 5.0}]}
  summary = aggregate.summarize(
    str(tmp_path), [32, 128, 512], "lb+lr", [0, 1], noise_record, 1.5, {"epochs": 1.0}
  )
  lb = summary["curves"]["lb"]
  assert [p["test_accuracy"] for p in lb] == pytest.approx([81.0, 79.75, 71.0])
  assert lb[0]["std"] == pytest.approx(1.4142135, rel=1e-5)
  remedy = summary["curves"]["lb+lr"]
  assert remedy[1]["test_accuracy"] is None and remedy[1]["diverged"] == 1
  assert summary["gap_onset"] == {"lb": 512, "lb+lr": 128}  # diverged counts as a gap
  # The onsets beside B_simple's measured range (90-150), and only whether they fall inside it.
  relation = summary["relation"]
  assert (relation["b_simple_min"], relation["b_simple_max"]) == (90.0, 150.0)
  assert relation["curves"]["lb"] == {
    "gap_onset": 512,
    "onset_within_b_simple_range": False,
    "reading": "B_simple 90-150 over epochs 1-5; lb gap opens at B = 512 (outside that range)",
  }
  assert relation["curves"]["lb+lr"]["onset_within_b_simple_range"] is True
  no_gap = aggregate.relation(noise_record, {"lb": None}, 4096)["curves"]["lb"]
  assert no_gap["onset_within_b_simple_range"] is None
  assert no_gap["reading"].endswith("lb no gap up to B = 4096")
  assert aggregate.gap_onset([point(32, 80.0), point(64, 79.5)], 1.0) is None
  assert aggregate.gap_onset([point(32, 80.0), point(64, 79.0)], 1.0) == 64


def test_figure_is_drawn_from_the_json_alone(tmp_path):
  summary = {
    "setup": {"model": "f1", "dataset": "mnist1d", "epochs": 20.0},
    "curves": {
      "lb": [point(32, 80.0), point(256, 78.0, 0.5), point(1024, None)],
      "lb+lr+gbn": [point(32, 80.0), point(256, 79.5), point(1024, 77.0)],
    },
    "noise_scale": {"along": [{"b_simple": 90.0, "epoch": 1.0}, {"b_simple": 300.0, "epoch": 5.0}]},
  }
  path = tmp_path / "sweep.json"
  path.write_text(json.dumps(summary))
  png = figure.draw(str(path))
  assert png == str(tmp_path / "sweep.png") and os.path.getsize(png) > 1000
  # One labelled line per measured epoch; none for an estimate that is not a positive
  # number (a noisy |G|^2 < 0).
  along = [*summary["noise_scale"]["along"], {"b_simple": -5.0, "epoch": 10.0}]
  plt = figure.pyplot()
  fig, ax = plt.subplots()
  figure._draw_noise(ax, along)
  assert [line.get_xdata()[0] for line in ax.lines] == [90.0, 300.0]
  assert [t.get_text() for t in ax.texts] == ["ep 1", "ep 5"]
  plt.close(fig)
  summary["noise_scale"] = {"along": along[2:]}
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


@pytest.mark.parametrize(
  "text, match",
  [("5,1", "ascending"), ("0,5", "positive"), ("1,x", "numbers like"), ("", "one or more"),
   ("1,1", "distinct")],
)  # fmt: skip
def test_bad_noise_epochs_are_named(text, match):
  with pytest.raises(ValueError, match=match):
    grid.parse_noise_epochs(text)


def test_noise_epochs_must_fall_inside_the_regime_on_distinct_updates():
  with pytest.raises(ValueError, match=r"--noise_epochs=0\.5,2: 2 is outside \(0, 1\]"):
    grid.sweep_configs(default.get_config(), [16, 64], "lb+lr", [0.5, 2.0], {"regime.epochs": 1.0})
  config = tiny_configs()["sb_b16"]  # 30 updates per epoch
  with pytest.raises(ValueError, match=r"two epochs fall on one update \(updates \[15, 15\]"):
    noise.noise_steps(config, 480, [0.5, 0.51])
  with pytest.raises(ValueError, match=r"epoch 0\.01 ends before the first of its updates"):
    noise.noise_steps(config, 480, [0.01, 1.0])
  assert noise.noise_steps(config, 480, [0.5, 1.0]) == [15, 30]


def command(workdir, *flags):
  return [sys.executable, "-m", "experiments.sweep", f"--workdir={workdir}", *flags]


@pytest.mark.slow  # one subprocess per bad flag: about 30 s of start-ups on two shared cores
def test_command_line_rejects_bad_flags_clearly(tmp_path):
  bad = subprocess.run(
    command(tmp_path, "--preset=tiny", "--batch_sizes=16,4096"),
    cwd=REPO, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert bad.returncode != 0 and "4096 exceeds the 480 training examples" in bad.stderr
  for flag, message in [
    ("--noise_epochs=0.5,3", "--noise_epochs=0.5,3: 3 is outside (0, 1]"),
    ("--noise_epochs=1,0.5", "--noise_epochs='1,0.5': expected one or more distinct positive"),
    ("--tuned_lr=maybe", "--tuned_lr"),
  ]:
    bad = subprocess.run(
      command(tmp_path, "--preset=tiny", flag), cwd=REPO, capture_output=True, text=True,
      timeout=300,
    )  # fmt: skip
    assert bad.returncode != 0 and message in bad.stderr, bad.stderr
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
    if line.startswith("sb_b16 seed 0: training to epoch 0.5"):
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
  # Each epoch's B_simple is measured once, before the stop or after it.
  assert ("".join(out) + rest + again.stdout).count("B_simple = ") == 2
  with open(tmp_path / "noise_scale.json") as f:
    assert [r["step"] for r in json.load(f)["along"]] == [15, 30]
  assert (tmp_path / "sweep.json").exists()
