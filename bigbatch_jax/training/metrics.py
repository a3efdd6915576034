"""Metrics on the host: a JSONL log, the log-t fit and the run's figures."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterable, Sequence

import numpy as np

from bigbatch_jax.training.json_files import fsync_file, read_json_lines, write_lines_atomic
from bigbatch_jax.training.plotting import pyplot


class MetricsLog:
  """Appends one JSON object per line to ``path``; survives restarts.

  On resume, records after the restored step are dropped (they were written
  after the last checkpoint and will be produced again), so a resumed run's
  log equals an uninterrupted one's.

  In a multi-process run every process holds a log of the shared workdir, but
  only one (``writer=True``, process 0) changes the file; the others' writes
  and truncations do nothing, so two processes never race on it.
  """

  def __init__(self, path: str, writer: bool = True):
    self.path = path
    self.writer = writer

  def truncate_after(self, step: int) -> None:
    """Keeps the records up to ``step`` (the restored checkpoint), atomically."""
    if not self.writer:
      return
    if not os.path.exists(self.path):
      return
    # A crash during an append leaves a torn last line: it is after the checkpoint.
    records = read_json_lines(self.path, _METRICS_REMEDY, drop_torn_end=True)
    write_lines_atomic(self.path, [r for r in records if r["step"] <= step])

  def sync(self) -> None:
    """Flushes the appended records to disk (called at each checkpoint)."""
    if self.writer and os.path.exists(self.path):
      fsync_file(self.path)

  def write(self, record: dict) -> None:
    if not self.writer:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(_plain(record)) + "\n")

  def read(self) -> list[dict]:
    return read_metrics(self.path) if os.path.exists(self.path) else []


def read_metrics(path: str) -> list[dict]:
  """The records of a run's ``metrics.jsonl`` (``path`` is the file or the run's workdir)."""
  if os.path.isdir(path):
    path = os.path.join(path, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no metrics file at {path}")
  return read_json_lines(path, _METRICS_REMEDY)


_METRICS_REMEDY = (
  "Delete the damaged line and the ones after it (a resumed run writes the records after its "
  "checkpoint again), or rerun the run in a new --workdir"
)


def distances_at_drops(workdir: str) -> tuple[float, ...]:
  """||w - w0|| of a finished run at each of its learning-rate drops (Hoffer section 5).

  Reads ``metrics.jsonl`` and takes the weight distance logged last before
  each drop of the logged learning rate (finer logging gives closer values).
  """
  if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    raise FileNotFoundError(f"config.drop_distances_from: no metrics.jsonl in {workdir}")
  records = [r for r in read_metrics(workdir) if "lr" in r and "weight_distance" in r]
  distances = []
  for before, after in itertools.pairwise(records):
    if after["lr"] < before["lr"] * (1 - 1e-6):
      distances.append(float(before["weight_distance"]))
  if not distances:
    raise ValueError(f"the run in {workdir} logged no learning-rate drop to take distances from")
  return tuple(distances)


def _plain(record: dict) -> dict:
  out = {}
  for k, v in record.items():
    if hasattr(v, "item"):
      v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
      v = str(v)  # JSON has no NaN; keep it readable
    out[k] = v
  return out


def fit_log_growth(steps: Sequence[float], distances: Sequence[float]) -> dict[str, float]:
  """Least-squares fit of distance = slope * log(step) + intercept (Hoffer eq. 4).

  Args:
    steps: update counts (> 0).
    distances: ||w_t - w0|| at those steps.

  Returns:
    ``slope``, ``intercept`` and ``r2`` (coefficient of determination).
  """
  t = np.asarray(steps, np.float64)
  d = np.asarray(distances, np.float64)
  if t.shape != d.shape or t.ndim != 1:
    raise ValueError(f"steps and distances must be 1-D of equal length, got {t.shape}, {d.shape}")
  if len(t) < 2:
    raise ValueError(f"need at least 2 points to fit, got {len(t)}")
  if np.any(t <= 0):
    raise ValueError("steps must be > 0 to take log(step)")
  x = np.log(t)
  slope, intercept = np.polyfit(x, d, 1)
  residual = d - (slope * x + intercept)
  total = np.sum((d - d.mean()) ** 2)
  r2 = 1.0 - np.sum(residual**2) / total if total > 0 else 1.0
  return {"slope": float(slope), "intercept": float(intercept), "r2": float(r2)}


def _series(records: Iterable[dict], key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
  pairs = [
    (r[x], r[key])
    for r in records
    if key in r and isinstance(r[key], int | float) and math.isfinite(r[key])
  ]
  if not pairs:
    return np.zeros(0), np.zeros(0)
  a = np.asarray(pairs, np.float64)
  return a[:, 0], a[:, 1]


def member_label(seed: int, hyperparameters: dict | None = None) -> str:
  """How a population member is named in messages and figures: ``seed 0, regime.lr=0.03``."""
  values = (f"{k}={v:g}" for k, v in (hyperparameters or {}).items())
  return ", ".join([f"seed {seed}", *values])


def _by_member(records: list[dict]) -> list[tuple[str, list[dict]]]:
  """(label suffix, records) per population member (``member`` field); one group otherwise."""
  members = sorted({r["member"] for r in records if "member" in r})
  if not members:
    return [("", records)]
  groups = []
  for m in members:
    own = [r for r in records if r.get("member") == m]
    groups.append((f" {member_label(own[0]['seed'], own[0].get('hyperparameters'))}", own))
  return groups


def plot_run(records: list[dict], out_dir: str, title: str = "") -> list[str]:
  """Writes ``error_curves.png`` and ``weight_distance.png``; returns their paths.

  A population's records (with ``member``) get one error curve per member.
  """
  plt = pyplot()
  paths = []
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  groups = _by_member(records)
  for ax, x in zip(axes, ("epoch", "step")):
    for suffix, own in groups:
      for key, label in (("test_error", "test"), ("train_error", "train")):
        xs, ys = _series(own, key, x)
        if len(xs):
          ax.plot(xs, 100 * ys, label=label + suffix)
    ax.set_xlabel("epoch" if x == "epoch" else "updates")
    ax.set_ylabel("error (%)")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(f"{title} error")
  fig.tight_layout()
  paths.append(os.path.join(out_dir, "error_curves.png"))
  fig.savefig(paths[-1], dpi=100)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(5, 4))
  for suffix, own in groups:  # one curve and fit per member of a population
    steps, dist = _series(own, "weight_distance")
    keep = steps > 0
    if keep.sum() >= 2:
      fit = fit_log_growth(steps[keep], dist[keep])
      (line,) = ax.plot(steps[keep], dist[keep], label="||w - w0||" + suffix)
      ax.plot(
        steps[keep],
        fit["slope"] * np.log(steps[keep]) + fit["intercept"],
        "--",
        **({"color": line.get_color()} if suffix else {}),
        label=f"{fit['slope']:.2f} log t + {fit['intercept']:.2f} (R²={fit['r2']:.3f})",
      )
      ax.legend()
  ax.set_xscale("log")
  ax.set_xlabel("updates t (log scale)")
  ax.set_ylabel("||w_t - w_0||")
  ax.set_title(f"{title} weight distance (Hoffer Fig. 2)")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  paths.append(os.path.join(out_dir, "weight_distance.png"))
  fig.savefig(paths[-1], dpi=100)
  plt.close(fig)
  return paths
