"""How every entry point ends when a signal preempted its run: the command to rerun, status 75."""

import shlex
import signal
import sys

from bigbatch_jax.training import PREEMPTED_EXIT_CODE, Preempted
from bigbatch_jax.training.preemption import SIGNALS


def _report_and_ignore(signum, frame) -> None:
  del frame
  name = signal.Signals(signum).name
  print(
    f"{name} received again: ignored, the run is already stopped and checkpointed "
    f"(exiting with status {PREEMPTED_EXIT_CODE})",
    file=sys.stderr,
    flush=True,
  )


def exit_for_rerun(stopped: Preempted, module: str) -> None:
  """Prints where ``stopped`` left the run and the command that resumes it; exits 75.

  Further SIGTERM/SIGINT (a scheduler's repeated notice, a second Ctrl-C) are
  reported and ignored until the process has exited, so the status stays 75
  and no traceback is printed.
  """
  for sig in SIGNALS:
    signal.signal(sig, _report_and_ignore)
  command = shlex.join([sys.executable, "-m", module, *sys.argv[1:]])
  print(f"{stopped}\ncommand: {command}", file=sys.stderr, flush=True)
  sys.exit(PREEMPTED_EXIT_CODE)
