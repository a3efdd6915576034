"""The command line of the Table 1 driver: ``python -m experiments.table1``.

Flags: ``--config`` (a config module; its ``get_config(VARIANT[,OPTION])``
builds each row, and its optional ``PAPER_ACCURACY`` / ``PAPER_DATASET``
give the paper's numbers), ``--config.KEY=VALUE`` (applied to every row),
``--workdir``, ``--seeds``, ``--variants`` (rows, or a set: ``default``,
``paper``, ``reviewers``, ``recipes``, ``normalizers``) and ``--preset``:

* ``quick``: the config's ``table1`` option, the laptop-sized reproduction.
* ``full``: the config as the paper defines it (e.g. F1: 50 epochs, batch
  128 against 4096, 784-512x5-10).
* ``auto`` (default): ``full`` when the dataset is the paper's, else ``quick``.

``--protocol=reference`` runs every column as the bigBatch reference code
runs it (``bigbatch_jax.protocol``, ``bigbatch_jax.reference_columns``): its
script's batch size, ghost size, lr rule and epoch stretch, the momentum
restart every epoch, the MNIST augmentation and Normalize(0.5, 0.5) on
in-memory images, U(0, 1) batch-norm scales, each epoch's partial last batch
and PyTorch's unbiased running variance (docs/reference_protocol.md).
``--protocol=reference-fitted`` is the earlier selection fitted to the paper's
numbers: the momentum restart, the MNIST augmentation and main_normal.py's
sqrt(B/256) lr and ceil(B/256) stretch on every column.

``--variants=recipes`` runs the validation-tuned protocol (``lr_selection``,
``--select_lr``): each row's learning rate is chosen from a grid of five
(extended beyond its end when an end wins) on a validation split held out
from the training set, then its seeds train at it.

``--ablation=SB_ROW,LB_ROW`` (e.g. ``sb,lb``, or ``sb,lb+lr`` where the lr
rule matters) runs the ablation set instead of the table (``ablation``): the
two rows under the clean protocol, under each artefact of the reference
protocol alone and under all of them together, with the gap and its Welch
p-value; ``table1.md`` / ``table1.json`` then hold the ablation table, and
artefacts that do not apply to the data or the row are reported as such.

Each row's seeds train as one population (``--population=false``: one run
per seed). On the CPU the driver simulates one device per usable core and
splits each population's members over them, a single run on one device
(``--cpu_devices``, ``devices``).

Each run is evaluated ``EVALS_PER_RUN`` times and logs ``LOGS_PER_RUN``
times, whatever its length (unless --config.eval_every_epochs or
--config.log_every_steps are given), so that curves of runs of 300 and 5000
updates have the same resolution.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from bigbatch_jax.protocol import PROTOCOLS
from bigbatch_jax.training import Preempted, parse_variant, retain_freed_host_memory
from bigbatch_jax.training.spec import load_data
from experiments import launch
from experiments.rerun import exit_for_rerun
from experiments.table1 import ablation, run_table
from experiments.table1.devices import CPU_DEVICES_HELP, simulate_cpu_devices
from experiments.table1.rows import (
  DEFAULT_VARIANTS,
  is_mnist,
  load_config_module,
  parse_seeds,
  parse_variants,
  resolve_preset,
  schedule_records,
  variant_config,
)

DEFAULT_CONFIG = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "f1.py"
)

FLAGS = flags.FLAGS
launch.define_config_file(
  DEFAULT_CONFIG,
  "Config module (no ':argument'; the driver builds one config per row). "
  "--config.KEY=VALUE overrides apply to every row.",
)
flags.DEFINE_string("workdir", "runs/table1", "Output directory (resumable).")
flags.DEFINE_string(
  "seeds",
  ",".join(str(s) for s in range(10)),
  "Comma-separated seeds, e.g. 0,1,2. Ten by default: with three, the tests of the claims have "
  "little power (docs/statistics.md).",
)
flags.DEFINE_string(
  "variants",
  "default",
  f"Comma-separated rows (variants, optionally @2x or @r4), or a set: default "
  f"({','.join(DEFAULT_VARIANTS)}), all (every row: default's, sb@2x, the RA rows without "
  "Ghost BN and the r = 4 rows), paper (Hoffer Table 1's columns and sb@2x), reviewers "
  "(their questions' rows, with sb and lb+lr+gbn+ra), recipes (the large-batch recipes "
  "with SB's epochs) or normalizers (Ghost BN against Ghost Noise Injection, without "
  "and with RA).",
)
flags.DEFINE_enum(
  "protocol",
  None,
  PROTOCOLS,
  "The protocol of every run (bigbatch_jax.protocol): clean; reference, each column as the "
  "bigBatch code runs it; or reference-fitted, the selection fitted to the paper's numbers. "
  "Same as --config.protocol.",
)
flags.DEFINE_string(
  "ablation",
  "",
  "SB_ROW,LB_ROW, e.g. sb,lb: run the reference protocol's artefacts alone and together on "
  "these two rows (the ablation table) instead of --variants.",
)
flags.DEFINE_bool(
  "population",
  True,
  "Train each row's seeds as one population in one compiled step (member i equals the run "
  "of seed i); false: one run per seed, one after another.",
)
flags.DEFINE_bool(
  "select_lr",
  None,
  "Choose each row's learning rate on a validation split first (10% of the training set held "
  "out; the default rate x 1/4, 1/2, 1, 2, 4, extended beyond an end that wins; two selection "
  "seeds; experiments/table1/lr_selection.py), then run --seeds at it. Default: on for "
  "--variants=recipes, else off.",
)
flags.DEFINE_integer("cpu_devices", None, CPU_DEVICES_HELP)
flags.DEFINE_bool(
  "hessian", True, "Measure the top Hessian eigenvalue of each row's first three seeds (λ_max)."
)
flags.DEFINE_bool(
  "covariance", True, "Measure each row's update covariance at SB's w0 (the tr cov column)."
)
flags.DEFINE_string(
  "preset",
  "auto",
  "quick: the config's laptop-sized 'table1' option; full: the paper's regime; "
  "auto: full on the paper's dataset, else quick.",
)


@dataclasses.dataclass(frozen=True)
class Setup:
  """What the flags ask for: the configs per row and the paper's numbers."""

  configs: dict[str, ml_collections.ConfigDict]
  preset: str
  paper_accuracy: dict[str, float] | None
  paper_dataset: str | None
  paper_data: bool  # the data is MNIST (rows.is_mnist): print the paper's numbers
  num_train: int  # the training set's size


def with_protocol(overrides: dict, protocol: str | None) -> dict:
  """The --config overrides with --protocol's choice added; the two must agree."""
  if protocol is None:
    return overrides
  if overrides.get("protocol", protocol) != protocol:
    raise ValueError(
      f"--protocol={protocol} and --config.protocol={overrides['protocol']} disagree"
    )
  return {**overrides, "protocol": protocol}


def config_module():
  """The module of --config, given without ':ARGUMENT'."""
  spec = config_flags.get_config_filename(FLAGS["config"])
  path, sep, arg = spec.partition(":")
  if sep:
    raise ValueError(
      f"--config={spec!r}: give the file without ':{arg}'; the driver builds one config per "
      "row (choose them with --variants) and the size with --preset"
    )
  return load_config_module(path)


def setup_from_flags() -> Setup:
  """Builds each row's config from --config, its overrides, --preset and --variants."""
  module = config_module()
  overrides = with_protocol(config_flags.get_override_values(FLAGS["config"]), FLAGS.protocol)
  paper_dataset = getattr(module, "PAPER_DATASET", None)
  preset = resolve_preset(FLAGS.preset, FLAGS.config.dataset, paper_dataset)
  rows = parse_variants(FLAGS.variants)
  configs = {row: variant_config(module, row, preset, overrides) for row in rows}
  data = load_data(next(iter(configs.values())))
  for config in configs.values():
    if parse_variant(config.variant).grow_batch and "batch_growth_max" not in overrides:
      # A growing batch stops at the training set and the lr drops from there
      # on (Smith et al.'s hybrid), so that "grow" runs on small data sets.
      config.batch_growth_max = data.num_train
    schedule_records(config, data.num_train, overrides)
  paper_data = paper_dataset == "tfds:mnist" and is_mnist(FLAGS.config.dataset, data)
  paper_data = paper_data or FLAGS.config.dataset == paper_dataset
  return Setup(
    configs,
    preset,
    getattr(module, "PAPER_ACCURACY", None),
    paper_dataset,
    paper_data,
    data.num_train,
  )


def ablation_from_flags():
  """The ablation set of --ablation (see ``ablation``): (configs, skipped, rows, preset)."""
  if FLAGS["variants"].present or FLAGS.protocol is not None:
    raise ValueError(
      f"--ablation={FLAGS.ablation} chooses its own rows and protocols; drop --variants and "
      "--protocol"
    )
  pair = ablation.parse_ablation(FLAGS.ablation)
  module = config_module()
  overrides = config_flags.get_override_values(FLAGS["config"])
  paper_dataset = getattr(module, "PAPER_DATASET", None)
  preset = resolve_preset(FLAGS.preset, FLAGS.config.dataset, paper_dataset)
  data = load_data(variant_config(module, pair[0], preset, overrides))
  configs, skipped = ablation.ablation_configs(module, pair, preset, overrides, data)
  for config in configs.values():
    schedule_records(config, data.num_train, overrides)
  return configs, skipped, pair, preset


def run_ablation_from_flags(seeds: list[int], member_devices: int) -> None:
  """Runs --ablation's set (bad flags: a usage error) and prints its table."""
  try:
    configs, skipped, pair, preset = ablation_from_flags()
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  print(
    f"Ablation: {len(configs)} runs x {len(seeds)} seeds, preset {preset}, rows {pair}; "
    f"workdir {FLAGS.workdir}",
    flush=True,
  )
  ablation.run_ablation(
    configs, skipped, pair, seeds, FLAGS.workdir, preset=preset,
    echo=lambda line: print(line, file=sys.stdout, flush=True), population=FLAGS.population,
    member_devices=member_devices,
  )  # fmt: skip


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    # Orbax logs every checkpoint at INFO; the progress lines say enough.
    logging.set_verbosity(logging.WARNING)
  retain_freed_host_memory()  # before JAX starts: see bigbatch_jax/training/host_memory.py
  # Seeds of one row compile the same programs: the persistent cache
  # compiles them once (about 4 s per run on two CPU cores).
  jax.config.update("jax_compilation_cache_dir", os.path.join(FLAGS.workdir, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  try:
    member_devices = simulate_cpu_devices(FLAGS.cpu_devices)
    seeds = parse_seeds(FLAGS.seeds)
    setup = None if FLAGS.ablation else setup_from_flags()
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  try:
    if setup is None:
      run_ablation_from_flags(seeds, member_devices)
      return
    some = next(iter(setup.configs.values()))
    print(
      f"Table 1: {len(setup.configs)} rows x {len(seeds)} seeds, preset {setup.preset}, "
      f"{some.model} on {some.dataset}, B_S={some.base_batch_size}, "
      f"B_L={some.large_batch_size}; workdir {FLAGS.workdir}",
      flush=True,
    )
    run_table(
      setup.configs,
      seeds,
      FLAGS.workdir,
      paper_accuracy=setup.paper_accuracy,
      paper_dataset=setup.paper_dataset,
      preset=setup.preset,
      echo=lambda line: print(line, file=sys.stdout, flush=True),
      hessian=FLAGS.hessian,
      covariance=FLAGS.covariance,
      paper_data=setup.paper_data,
      population=FLAGS.population,
      select_lr=FLAGS.variants.strip() == "recipes" if FLAGS.select_lr is None else FLAGS.select_lr,
      num_train=setup.num_train,
      member_devices=member_devices,
    )
  except Preempted as stopped:  # the same command resumes the run and then the table
    exit_for_rerun(stopped, "experiments.table1")


if __name__ == "__main__":
  launch.run(main, DEFAULT_CONFIG)
