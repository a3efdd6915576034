"""Trains one variant of one paper row.

  python -m experiments.main --config=experiments/configs/f1.py:lb+lr+gbn,quick --workdir=/tmp/run

Any config key can be overridden, e.g. --config.batch_size=1024 (--help lists
the keys with their meaning). Re-running the same command with the same
--workdir resumes from its last checkpoint. SIGTERM or SIGINT checkpoints the
step reached and exits with status 75 (``training.PREEMPTED_EXIT_CODE``); the
same command then resumes it. A misspelled key or another user error prints
one line and exits with status 2 (``--verbosity=1`` or
``BIGBATCH_JAX_TRACEBACK=1``: the traceback instead).
"""

from absl import app, flags, logging

from bigbatch_jax.training import Preempted, retain_freed_host_memory, train_and_evaluate
from experiments import launch
from experiments.rerun import exit_for_rerun

FLAGS = flags.FLAGS
launch.define_config_file(
  None, "Config file and argument, e.g. experiments/configs/f1.py:lb+lr+gbn."
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
  launch.run(main)
