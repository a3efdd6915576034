"""How every entry point ends when a signal preempted its run: the command to rerun, status 75."""

import shlex
import sys

from bigbatch_jax.training import PREEMPTED_EXIT_CODE, Preempted


def exit_for_rerun(stopped: Preempted, module: str) -> None:
  """Prints where ``stopped`` left the run and the command that resumes it; exits 75."""
  command = shlex.join([sys.executable, "-m", module, *sys.argv[1:]])
  print(f"{stopped}\ncommand: {command}", file=sys.stderr, flush=True)
  sys.exit(PREEMPTED_EXIT_CODE)
