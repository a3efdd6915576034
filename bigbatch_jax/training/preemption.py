"""Stopping a run on SIGTERM/SIGINT at a step every process agrees on, to checkpoint it.

Clusters announce an eviction with SIGTERM and a grace period (SLURM, Kubernetes,
Cloud TPU), and Ctrl-C sends SIGINT. The handlers installed here only record the
signal (a host-side Python value); the loop reads it between its jitted calls,
so no device value is brought to the host for it. The loop then checkpoints
the step it reached and raises :class:`Preempted`.

Multi-host: a signal may reach one process only, or the processes at different
steps, while every process must save the same step (they write one checkpoint
together). JAX's preemption sync manager (started by jax.distributed.initialize
unless ``jax_enable_preemption_service`` is off) agrees on it over the
coordination service: once any process posts a notice, each process's
background thread publishes the last step it reported, and every process
stops after the call holding step max + 1
(``multihost_utils.reached_preemption_sync_point``).
Its own SIGTERM listener is replaced by the handler installed here, which
posts the notice itself, for SIGINT as well.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

from bigbatch_jax._compat import distributed_client, preemption_sync_manager_running

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The exit status of a run stopped by a signal after its checkpoint is written:
# sysexits' EX_TEMPFAIL ("temporary failure; the user is invited to retry").
PREEMPTED_EXIT_CODE = os.EX_TEMPFAIL
# The key jax's preemption sync manager watches (xla/pjrt/distributed/preemption).
_NOTICE_KEY = "RECEIVED_PREEMPTION_NOTICE"


class Preempted(RuntimeError):
  """Raised by ``train_and_evaluate`` after a signal, once the reached step is checkpointed."""

  def __init__(self, message: str, signal_name: str, step: int, checkpoint_step: int | None):
    super().__init__(message)
    self.signal_name = signal_name
    self.step = step
    self.checkpoint_step = checkpoint_step


class PreemptionWatch:
  """SIGTERM/SIGINT handlers for one run (a context manager), and the agreed stopping point.

  Handlers are installed on entry and the previous ones restored on exit, so a
  notebook or a test calling the loop gets its own handling back. Outside the
  main thread Python cannot install handlers; the run is then not watched.
  """

  def __init__(self):
    self.signal_name: str | None = None
    self._noticed = False
    self._previous = {}
    self._multihost = jax.process_count() > 1

  def __enter__(self) -> PreemptionWatch:
    if threading.current_thread() is not threading.main_thread():
      log.warning("not in the main thread: SIGTERM/SIGINT will not checkpoint this run")
      return self
    if self._multihost and not preemption_sync_manager_running():
      log.warning(
        "jax's preemption service is off (jax_enable_preemption_service): the processes "
        "cannot agree on a step, so SIGTERM/SIGINT end this run without a checkpoint"
      )
      return self
    for sig in SIGNALS:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      # None: the previous handler was not installed from Python (jax's own
      # SIGTERM listener, say); the default is the closest Python can restore.
      signal.signal(sig, signal.SIG_DFL if previous is None else previous)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.signal_name is None:
      self.signal_name = name
      _say(f"{name} received: stopping after the step in flight, then checkpointing it")
    else:
      # Never interrupt: a second signal must not cut the checkpoint being written.
      _say(f"{name} received again: already stopping; wait for the checkpoint to be written")

  def should_stop(self, previous: int, step: int) -> bool:
    """Whether to stop at ``step``, reached by a call from ``previous`` (equal before any call).

    Every process calls it with the same steps. The sync manager is told each
    step of the call: orbax's ``CheckpointManager.save`` reports its step to
    it too, so steps (not call counts) are the one counter both can share, and
    the agreed step (the fastest process's last step + 1) falls inside exactly
    one call, the same on every process.
    """
    if not self._multihost:
      return self.signal_name is not None
    if self.signal_name is not None and not self._noticed:
      self._noticed = True
      now = datetime.datetime.now(datetime.UTC).isoformat()
      # Several processes may post it (SLURM signals every task): overwrite.
      distributed_client().key_value_set(_NOTICE_KEY, now, allow_overwrite=True)
    reached = False
    for s in range(previous + 1, step + 1) if step > previous else [step]:
      reached |= multihost_utils.reached_preemption_sync_point(s)
    if reached and self.signal_name is None:
      self.signal_name = "a peer's signal"
    return reached


def _say(message: str) -> None:
  log.warning(message)
  print(f"WARNING: {message}", flush=True)
