"""One writer per workdir: a lock file holding the writer's pid and host.

Two runs writing one workdir at once corrupt each other's metrics and
checkpoints. The writing process (process 0 of a multi-host run) holds an
exclusive ``flock`` on ``WORKDIR/lock`` for the whole run; the kernel drops
it when the process dies, however it dies, so a lock left by a killed run is
found free and taken over with a message. Where the file system has no
``flock`` (some network file systems), a lock whose pid is dead on this host
counts as stale.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time

LOCK_FILE = "lock"


class WorkdirLocked(RuntimeError):
  """Another live process holds the workdir."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """A context manager holding ``workdir``'s lock (a no-op when ``writer`` is False)."""

  def __init__(self, workdir: str, writer: bool = True):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.writer = writer
    self._fd: int | None = None

  def _holder(self) -> dict:
    try:
      with open(self.path) as f:
        return json.loads(f.read() or "{}")
    except (OSError, ValueError):
      return {}

  def __enter__(self) -> WorkdirLock:
    if not self.writer:
      return self
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
      if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        os.close(fd)
        raise WorkdirLocked(self._refusal(self._holder())) from None
      self._check_without_flock(error)
    previous = self._holder()
    if previous.get("pid") is not None:
      _say(
        f"taking over the stale lock {self.path} of pid {previous['pid']} on "
        f"{previous.get('host')!r} (that process has ended)"
      )
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def _check_without_flock(self, error: OSError) -> None:
    holder = self._holder()
    same_host = holder.get("host") == socket.gethostname()
    if holder.get("pid") is not None and (not same_host or _pid_alive(int(holder["pid"]))):
      raise WorkdirLocked(
        self._refusal(holder) + f" (the file system has no flock: {error.strerror}; if that "
        f"process has ended, delete {self.path})"
      ) from None

  def _refusal(self, holder: dict) -> str:
    who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')!r}"
    return (
      f"the workdir {os.path.dirname(self.path)} is in use by another run ({who}, lock file "
      f"{self.path}). Wait for that run to end or stop it, or use another --workdir"
    )

  def __exit__(self, *exc) -> None:
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)  # empty: released, not stale
      fcntl.flock(self._fd, fcntl.LOCK_UN)
    finally:
      os.close(self._fd)
      self._fd = None


def _say(message: str) -> None:
  import logging

  logging.getLogger(__name__).warning(message)
  print(f"WARNING: {message}", flush=True)
