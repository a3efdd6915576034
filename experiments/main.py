"""Trains one variant of one paper row.

  python -m experiments.main --config=experiments/configs/f1.py:lb+lr+gbn,quick --workdir=/tmp/run

Any config key can be overridden, e.g. --config.batch_size=1024. Re-running
the same command with the same --workdir resumes from its last checkpoint.
SIGTERM or SIGINT checkpoints the step reached and exits with status 75
(``training.PREEMPTED_EXIT_CODE``); the same command then resumes it.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from bigbatch_jax.training import Preempted, retain_freed_host_memory, train_and_evaluate
from experiments.rerun import exit_for_rerun

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config", None, "Config file, e.g. configs/f1.py:lb+lr+gbn.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for metrics, checkpoints and plots.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    # Orbax logs every checkpoint step at INFO; the progress bar says enough.
    logging.set_verbosity(logging.WARNING)
  retain_freed_host_memory()  # before JAX starts: see host_memory.py
  try:
    train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except Preempted as stopped:
    exit_for_rerun(stopped, "experiments.main")


if __name__ == "__main__":
  app.run(main)
