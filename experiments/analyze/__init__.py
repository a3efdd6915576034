"""Diagnostics of finished runs: sharpness, interpolation, landscape, noise scale.

  python -m experiments.analyze --workdir=/tmp/sb --other_workdir=/tmp/lb \
    --what=sharpness,interpolation,landscape,noise_scale

Reads the runs' config.json, metrics.jsonl and checkpoints and writes
``analysis.json`` (the numbers; new results replace those of the same
diagnostic) and ``analysis_<what>.png`` into --workdir:

* sharpness: top Hessian eigenvalues (Lanczos) and Keskar's epsilon-sharpness
  of each run (--workdir, --other_workdir, --extra_workdirs).
* interpolation: loss and accuracy along (1 - a) theta_S + a theta_L,
  theta_S from --workdir and theta_L from --other_workdir (required), batch
  statistics recomputed on training data at each a.
* landscape: Hoffer appendix B at the run's initialization w0, with c the
  largest weight distance the run reached (or --landscape_max_distance).
* noise_scale: B_simple at every kept checkpoint of --workdir, and the
  update covariance of each run's regime at --workdir's last parameters.

``compute`` computes the numbers, ``figures`` draws them from the JSON,
``__main__`` is the command line.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from bigbatch_jax.training import json_files
from experiments.analyze import compute, figures
from experiments.analyze.compute import DIAGNOSTICS, Options, parse_what

__all__ = ["DIAGNOSTICS", "Options", "analyze", "parse_what"]


def _compute_one(name: str, run, other, extra, load, options: Options) -> dict:
  if name == "sharpness":
    return compute.sharpness([run] + ([other] if other else []) + extra, options)
  if name == "interpolation":
    return compute.interpolation(run, other, options)
  if name == "landscape":
    return compute.landscape(run, options)
  return compute.noise_scale(run, [run] + ([other] if other else []), load, options)


def analyze(
  workdir: str,
  what: str | Sequence[str],
  other_workdir: str | None = None,
  extra_workdirs: Sequence[str] = (),
  options: Options | None = None,
) -> dict:
  """Runs the requested diagnostics and writes analysis.json and the PNGs into ``workdir``.

  Args:
    workdir: a finished training workdir (theta_S for interpolation).
    what: comma-separated names, a subset of ``DIAGNOSTICS``.
    other_workdir: a second run (theta_L; required for interpolation).
    extra_workdirs: more runs to compare in the sharpness figure.
    options: the diagnostics' sizes (None: the defaults).

  Returns:
    The analysis dict written to ``workdir/analysis.json`` (all diagnostics
    run so far, the requested ones replaced), each with its figure's path.
  """
  names = parse_what(what)
  options = Options() if options is None else options
  compute.check_options(options)
  if "interpolation" in names and not other_workdir:
    raise ValueError("--what=interpolation needs --other_workdir (theta_L, the large-batch run)")
  load = compute.Loader()
  run = load(workdir)
  other = load(other_workdir) if other_workdir else None
  extra = [load(w) for w in extra_workdirs] if "sharpness" in names else []
  path = os.path.join(workdir, "analysis.json")
  analysis = {}
  if os.path.exists(path):
    analysis = json_files.read_json(path, "Delete it to compute the diagnostics again")
  for name in names:
    analysis[name] = _compute_one(name, run, other, extra, load, options)
    analysis[name]["figure"] = figures.PLOTS[name](analysis[name], workdir)
    json_files.write_json_atomic(path, analysis, indent=2)
  analysis["options"] = dataclasses.asdict(options)
  json_files.write_json_atomic(path, analysis, indent=2)
  return analysis
