"""Atomic JSON and JSON Lines files, and reads whose errors name the file and what to do.

A file written here is either the old one or the whole new one, never torn: it
is written to a temporary file in the same directory, flushed to disk
(``fsync``) and renamed over the target (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  """Replaces ``path`` by ``text`` at once: temporary file, fsync, rename."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  _fsync_directory(directory)


def write_json_atomic(path: str | os.PathLike, value: Any, **dump_options: Any) -> None:
  """Writes ``value`` as JSON to ``path`` atomically (see :func:`write_text_atomic`)."""
  write_text_atomic(path, json.dumps(value, **dump_options))


def write_lines_atomic(path: str | os.PathLike, records: Iterable[dict]) -> None:
  """Replaces the JSON Lines file ``path`` by ``records``, one per line, atomically."""
  write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def read_json(path: str | os.PathLike, remedy: str = "") -> Any:
  """The JSON value in ``path``; an unreadable file raises ``ValueError`` naming it.

  Args:
    path: the file.
    remedy: what the user can do when the file is damaged (ends the message).
  """
  path = os.fspath(path)
  with open(path) as f:
    text = f.read()
  try:
    return json.loads(text)
  except json.JSONDecodeError as error:
    what = "is empty" if not text.strip() else f"is not valid JSON ({error})"
    raise ValueError(f"{path} {what}. {remedy or _DEFAULT_REMEDY}".rstrip()) from error


def read_json_lines(
  path: str | os.PathLike, remedy: str = "", drop_torn_end: bool = False
) -> list[dict]:
  """The records of the JSON Lines file ``path``; a bad line raises ``ValueError`` naming it.

  With ``drop_torn_end`` a last line without its newline that does not parse
  (an append cut short by a crash) is dropped instead.
  """
  path = os.fspath(path)
  records = []
  with open(path) as f:
    lines = f.readlines()
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as error:
      if drop_torn_end and number == len(lines) and not line.endswith("\n"):
        break
      raise ValueError(
        f"{path}, line {number}, is not valid JSON ({error}): {line[:80]!r}. "
        f"{remedy or _DEFAULT_REMEDY}".rstrip()
      ) from error
  return records


def fsync_file(path: str | os.PathLike) -> None:
  """Flushes the file ``path`` (appended to elsewhere) to disk."""
  fd = os.open(os.fspath(path), os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


_DEFAULT_REMEDY = "Restore it from a copy, or delete it to let the program write it again."


def _fsync_directory(directory: str) -> None:
  # The rename itself is durable only once the directory entry is on disk.
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass  # some file systems cannot fsync a directory; the rename is still atomic
  finally:
    os.close(fd)
