"""What each config key means, read from the comments that declare it in ``default.py``.

``default.py`` declares every key with a comment, on its line or in the
block of comment lines right above it; :func:`key_comments` reads them (the
source is the one documentation, so they cannot drift apart) and
:func:`describe` lists a config's keys with them, as the launcher's ``--help``
does.
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import textwrap
import tokenize

import ml_collections

from bigbatch_jax.configs import default


def _comments_by_line(source: str) -> tuple[dict[int, str], set[int]]:
  """Line -> its comment's text, and the lines that hold nothing but a comment."""
  tokens = tokenize.generate_tokens(io.StringIO(source).readline)
  comments = {
    t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT
  }
  lines = source.splitlines()
  alone = {n for n in comments if lines[n - 1].lstrip().startswith("#")}
  return comments, alone


def _target_key(node: ast.stmt) -> str | None:
  """``config.regime.lr = ...`` -> ``"regime.lr"``; None for other statements."""
  if not isinstance(node, ast.Assign) or len(node.targets) != 1:
    return None
  parts, target = [], node.targets[0]
  while isinstance(target, ast.Attribute):
    parts.append(target.attr)
    target = target.value
  if not (isinstance(target, ast.Name) and target.id == "config") or not parts:
    return None
  return ".".join(reversed(parts))


@functools.cache
def key_comments() -> dict[str, str]:
  """Dotted key -> its comment in ``default.py``, on one line.

  The comment on the key's own line(s) when it has one, else the comment
  lines right above it (a section heading over a commented key is not its
  comment).
  """
  source = textwrap.dedent(inspect.getsource(default))
  comments, alone = _comments_by_line(source)
  found = {}
  for node in ast.walk(ast.parse(source)):
    key = _target_key(node)
    if key is None:
      continue
    own = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
    above, line = [], node.lineno - 1
    while line in alone:
      above.insert(0, comments[line])
      line -= 1
    found[key] = " ".join(own or above)
  return found


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, object]:
  """Dotted key -> value for every value of ``config`` (an empty sub-config is one value)."""
  out = {}
  for key in config:
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      out.update(leaves(value, f"{prefix}{key}.") if len(value) else {prefix + key: {}})
    else:
      out[prefix + key] = value
  return out


def describe(config: ml_collections.ConfigDict, width: int = 100) -> str:
  """Every key of ``config`` (dotted), its value and its comment, one entry per key.

  >>> from bigbatch_jax import configs
  >>> text = describe(configs.get("f1", "sb"))
  >>> [line for line in text.splitlines() if line.startswith("regime.lr ")]
  ['regime.lr = 0.1: initial learning rate at base_batch_size']
  """
  comments = key_comments()
  lines = []
  for key, value in leaves(config).items():
    entry = f"{key} = {value!r}" + (f": {comments[key]}" if comments.get(key) else "")
    lines += textwrap.wrap(entry, width, subsequent_indent="    ", break_on_hyphens=False)
  return "\n".join(lines)
