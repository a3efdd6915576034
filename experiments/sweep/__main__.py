"""The command line of the sweep: ``python -m experiments.sweep``.

Flags: ``--config`` (default: experiments/configs/default.py, F1 on the
embedded MNIST-1D) and ``--config.KEY=VALUE`` overrides (applied to every
run, after the preset's sizes), ``--workdir``, ``--seeds``, ``--preset``
(``default``: B = 32 ... 4096, 20 epochs; ``tiny``: the tests' seconds-long
run), ``--batch_sizes``, ``--remedy``, ``--noise_epochs`` (where B_simple
is measured along the B_S run), ``--tuned_lr`` (the sqrt rule's curve at
rates selected on the validation split) and ``--gap_threshold``.
Rerunning the same command resumes: finished runs are skipped, an
interrupted one continues from its last checkpoint. A SIGTERM or SIGINT
stops the driver with a non-zero exit status: inside a run the training
loop checkpoints the step reached and the driver exits with
``training.PREEMPTED_EXIT_CODE`` (75); between runs (data loading, compilation,
a B_simple measurement) with 128 + the signal's number.
"""

from __future__ import annotations

import os
import signal
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from bigbatch_jax import training
from bigbatch_jax.training import make_plan, retain_freed_host_memory
from bigbatch_jax.training.spec import load_data
from experiments import launch
from experiments.rerun import exit_for_rerun
from experiments.sweep import noise, run_sweep
from experiments.sweep.grid import (
  PRESETS,
  parse_batch_sizes,
  parse_noise_epochs,
  parse_remedy,
  row,
  sweep_configs,
)
from experiments.table1.devices import CPU_DEVICES_HELP, simulate_cpu_devices
from experiments.table1.rows import parse_seeds

DEFAULT_CONFIG = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.py"
)

FLAGS = flags.FLAGS
launch.define_config_file(
  DEFAULT_CONFIG,
  "Config file of every run; --config.KEY=VALUE overrides apply to every run.",
)
flags.DEFINE_string("workdir", "runs/sweep", "Output directory (resumable).")
flags.DEFINE_string("seeds", "0", "Comma-separated seeds, e.g. 0,1,2.")
flags.DEFINE_enum("preset", "default", list(PRESETS), "Sizes: default (README figure) or tiny.")
flags.DEFINE_string(
  "batch_sizes", None, "Ascending batch sizes, the first the baseline (default: the preset's)."
)
flags.DEFINE_string("remedy", "lb+lr+gbn", "The remedy's variant (a large-batch one, no 'ra').")
flags.DEFINE_string(
  "noise_epochs",
  None,
  "Ascending epochs of the B_S run (seed: the first) at which B_simple is measured, e.g. "
  "1,5,10,15,20 (default: the preset's).",
)
flags.DEFINE_bool(
  "tuned_lr",
  None,
  "true/false: add the sqrt rule's curve (lb+lr) at a rate each batch size selects on the "
  "validation split (default: the preset's; true for default, false for tiny).",
)
flags.DEFINE_float("gap_threshold", 1.0, "Accuracy points below B_S's that count as a gap.")
flags.DEFINE_bool(
  "population",
  True,
  "Train each run's seeds as one population in one compiled step; false: one run per seed.",
)
flags.DEFINE_integer("cpu_devices", None, CPU_DEVICES_HELP)
# Exit status of a stop by signal between runs: 128 + the signal number, as a shell reports it.
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Stopped(Exception):
  """A signal asked the driver to stop."""


def _raise_stopped(signum, frame):
  raise Stopped(signum)


def setup_from_flags():
  """The configs per run, the batch sizes, the remedy and the seeds that the flags ask for."""
  preset = PRESETS[FLAGS.preset]
  seeds = parse_seeds(FLAGS.seeds)
  sizes = parse_batch_sizes(FLAGS.batch_sizes) if FLAGS.batch_sizes else list(preset["batch_sizes"])
  remedy = parse_remedy(FLAGS.remedy)
  spec = config_flags.get_config_filename(FLAGS["config"])
  if ":" in spec:
    raise ValueError(f"--config={spec!r}: give the file without ':ARG'; choose runs with --remedy")
  overrides = {**preset["config"], **config_flags.get_override_values(FLAGS["config"])}
  epochs = (
    parse_noise_epochs(FLAGS.noise_epochs) if FLAGS.noise_epochs else list(preset["noise_epochs"])
  )
  tuned = preset["tuned_lr"] if FLAGS.tuned_lr is None else FLAGS.tuned_lr
  configs = sweep_configs(FLAGS.config, sizes, remedy, epochs, overrides, tuned)
  num_train = load_data(configs[next(iter(configs))]).num_train
  noise.noise_steps(configs[row("sb", sizes[0])], num_train, epochs)  # two on one update fail now
  if sizes[-1] > num_train:
    raise ValueError(
      f"--batch_sizes: {sizes[-1]} exceeds the {num_train} training examples; "
      "use smaller sizes or more data (--config.mnist1d_num_samples)"
    )
  for config in configs.values():
    make_plan(config, num_train, num_devices=1)  # a bad combination fails now, not mid-sweep
  return configs, sizes, remedy, seeds, epochs


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint at INFO
  retain_freed_host_memory()  # before JAX starts: see bigbatch_jax/training/host_memory.py
  try:
    member_devices = simulate_cpu_devices(FLAGS.cpu_devices)
    configs, sizes, remedy, seeds, epochs = setup_from_flags()
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  # Runs of one batch size compile the same programs: compile them once.
  jax.config.update("jax_compilation_cache_dir", os.path.join(FLAGS.workdir, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  print(
    f"Sweep: B = {','.join(map(str, sizes))}, lb and {remedy}, seeds {seeds}, "
    f"{configs[next(iter(configs))].regime.epochs:g} epochs; workdir {FLAGS.workdir}",
    flush=True,
  )
  signal.signal(signal.SIGTERM, _raise_stopped)
  resume = "rerun the same command to resume"
  try:
    run_sweep(
      configs,
      sizes,
      remedy,
      seeds,
      FLAGS.workdir,
      lambda s: print(s, flush=True),
      population=FLAGS.population,
      noise_epochs=epochs,
      member_devices=member_devices,
    )
  except training.Preempted as stopped:  # a signal inside a run, once the loop checkpointed it
    print(f"{resume}", flush=True)
    exit_for_rerun(stopped, "experiments.sweep")
  except Stopped as e:  # SIGTERM outside a run's own handlers
    print(f"stopped by {signal.Signals(e.args[0]).name}; {resume}", flush=True)
    sys.exit(SIGNAL_EXIT[e.args[0]])
  except KeyboardInterrupt:
    print(f"stopped by SIGINT; {resume}", flush=True)
    sys.exit(SIGNAL_EXIT[signal.SIGINT])


if __name__ == "__main__":
  launch.run(main, DEFAULT_CONFIG)
