"""The command line of the run diagnostics: ``python -m experiments.analyze``."""

from __future__ import annotations

import dataclasses
import json

from absl import app, flags, logging

from experiments.analyze import analyze
from experiments.analyze.compute import DIAGNOSTICS, Options

FLAGS = flags.FLAGS
_DEFAULTS = Options()
flags.DEFINE_string("workdir", None, "A finished training workdir; outputs are written here.")
flags.DEFINE_string("what", ",".join(DIAGNOSTICS), f"Comma list of: {', '.join(DIAGNOSTICS)}.")
flags.DEFINE_string("other_workdir", None, "Second run: theta_L of the interpolation.")
flags.DEFINE_list("extra_workdirs", [], "More runs for the sharpness comparison.")
flags.DEFINE_integer("num_batches", _DEFAULTS.num_batches, "Fixed training batches of the loss.")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Examples per fixed batch.")
flags.DEFINE_integer("top_k", _DEFAULTS.top_k, "Hessian eigenvalues to report.")
flags.DEFINE_integer("lanczos_iterations", _DEFAULTS.lanczos_iterations, "Lanczos steps.")
flags.DEFINE_float("epsilon", _DEFAULTS.epsilon, "Keskar epsilon-sharpness box size.")
flags.DEFINE_integer("sharpness_steps", _DEFAULTS.sharpness_steps, "Ascent steps of sharpness.")
flags.DEFINE_integer("num_alphas", _DEFAULTS.num_alphas, "Interpolation points.")
flags.DEFINE_float("alpha_min", _DEFAULTS.alpha_min, "First interpolation coefficient.")
flags.DEFINE_float("alpha_max", _DEFAULTS.alpha_max, "Last interpolation coefficient.")
flags.DEFINE_integer("eval_examples", _DEFAULTS.eval_examples, "Examples per split (interp.).")
flags.DEFINE_integer("landscape_samples", _DEFAULTS.landscape_samples, "Random (v, z) pairs.")
flags.DEFINE_integer("landscape_bins", _DEFAULTS.landscape_bins, "Distance bins.")
flags.DEFINE_float("landscape_max_distance", None, "c (default: the run's max ||w - w0||).")
flags.DEFINE_integer("noise_small_batch", None, "Small batch (default: the base batch size).")
flags.DEFINE_integer("noise_big_batch", None, "Big batch (default: 8 x the small batch).")
flags.DEFINE_integer("noise_batches", _DEFAULTS.noise_batches, "Small batches per estimate.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of the batch draws and random directions.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  options = Options(**{f.name: FLAGS[f.name].value for f in dataclasses.fields(Options)})
  analysis = analyze(FLAGS.workdir, FLAGS.what, FLAGS.other_workdir, FLAGS.extra_workdirs, options)
  print(json.dumps({k: v.get("figure") for k, v in analysis.items() if isinstance(v, dict)}))


if __name__ == "__main__":
  app.run(main)
